"""Tool calls: OpenAI's ``tools`` and ``tool_choice`` (and the legacy ``functions`` and
``function_call``) in the prompt, in the grammar and in the answer.

The format is Hermes's, which the chat templates of Qwen2.5/Qwen3, Hermes and SmolLM3 define:
each call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``. A template that
renders ``tools`` itself gets them (``apply_chat_template(messages, tools=...)``); for one that
ignores them (SmolLM2's, say) they are described in the system message, in the words of
Qwen2.5's template, and earlier calls and results are written out in the same format.

``tool_choice``: ``"none"`` (no calls are read from the output), ``"auto"`` (free text, and
once the model writes ``<tool_call>`` the call is decoded under the tools' schemas: a lazy
grammar), ``"required"`` (the output is one or more calls) or a named function (calls of that
one). The answer's calls are parsed out of the text by :func:`parse_tool_calls`, streamed or
not (:class:`ToolCallStream`), so both give the same calls.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Collection, Optional, Sequence

__all__ = [
    "Tool",
    "ToolCall",
    "ToolCallStream",
    "ToolChoice",
    "ToolError",
    "parse_tool_calls",
    "parse_tool_choice",
    "parse_tools",
    "template_handles_tools",
    "template_messages",
    "tool_call_grammar",
]

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_MENTIONS_TOOLS = re.compile(r"\btools\b")
# the arguments as Hermes templates write them (tojson: ", " and ": "), no other whitespace
_ARGUMENT_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


class ToolError(ValueError):
    """A tool, tool choice or tool message that cannot be used; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any]
    description: Optional[str] = None

    def as_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "none", "auto", "required" or "named"
    name: Optional[str] = None  # the function, for "named"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def parse_tools(tools: Any, param: str = "tools", legacy: bool = False) -> list[Tool]:
    """OpenAI's ``tools`` (``[{"type": "function", "function": {...}}]``), or with ``legacy``
    the ``functions`` list (the function objects themselves)."""
    if not isinstance(tools, list) or not tools:
        raise ToolError(f"{param} must be a non-empty list", param)
    out: list[Tool] = []
    for i, item in enumerate(tools):
        where = f"{param}.{i}"
        if not legacy:
            if not isinstance(item, dict) or item.get("type") != "function":
                raise ToolError(f'{where}: only tools of type "function" are supported', where)
            item, where = item.get("function"), f"{where}.function"
        if not isinstance(item, dict):
            raise ToolError(f"{where} must be an object", where)
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolError(
                f"{where}.name must be 1 to 64 letters, digits, underscores or dashes, "
                f"got {name!r}",
                f"{where}.name",
            )
        if any(t.name == name for t in out):
            raise ToolError(f"{where}.name: {name!r} is given twice", f"{where}.name")
        parameters = item.get("parameters")
        if parameters is None:  # OpenAI: a function without parameters takes none
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise ToolError(f"{where}.parameters must be a JSON schema object", where)
        description = item.get("description")
        if description is not None and not isinstance(description, str):
            raise ToolError(f"{where}.description must be a string", f"{where}.description")
        out.append(Tool(name, parameters, description))
    return out


def parse_tool_choice(choice: Any, tools: Sequence[Tool], param: str = "tool_choice") -> ToolChoice:
    """OpenAI's ``tool_choice`` (default ``"auto"`` with tools); ``{"name": f}`` (the legacy
    ``function_call``) is accepted as well as ``{"type": "function", "function": {"name":
    f}}``."""
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise ToolError(f'{param} "{choice}" needs tools', param)
        return ToolChoice(choice)
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type") == "function" else choice
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            if not any(t.name == name for t in tools):
                raise ToolError(f"{param} names {name!r}, which is not one of the tools", param)
            return ToolChoice("named", name)
    raise ToolError(
        f'{param} must be "none", "auto", "required" or {{"type": "function", "function": '
        f'{{"name": ...}}}}, got {json.dumps(choice)[:100]}',
        param,
    )


def template_handles_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders ``tools`` itself."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "tool_use" in template or any(
            isinstance(t, str) and _MENTIONS_TOOLS.search(t) for t in template.values()
        )
    return isinstance(template, str) and _MENTIONS_TOOLS.search(template) is not None


def _call_text(name: str, arguments: Any) -> str:
    return (
        f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"
    )


def template_messages(
    messages: list[dict[str, Any]], tools: Sequence[Tool], native: bool
) -> tuple[list[dict[str, Any]], Optional[list[dict[str, Any]]]]:
    """(conversation, the ``tools`` argument of ``apply_chat_template``) for OpenAI-style
    messages. Assistant ``tool_calls`` get their arguments as objects (vLLM does the same:
    templates write them with ``tojson``). A template that does not render tools (not
    ``native``) gets none: they go into the system message, earlier calls into the assistant's
    text and tool results into user turns, as Qwen2.5's template writes them."""
    conversation = []
    for i, message in enumerate(messages):
        message = dict(message)
        calls = message.get("tool_calls")
        if calls:
            message["tool_calls"] = [
                _template_call(c, f"messages.{i}.tool_calls.{k}") for k, c in enumerate(calls)
            ]
        conversation.append(message)
    if native:
        return conversation, [t.as_openai() for t in tools] if tools else None
    out: list[dict[str, Any]] = []
    for message in conversation:
        calls = message.pop("tool_calls", None)
        if calls:
            texts = [message.get("content") or ""]
            texts += [_call_text(c["function"]["name"], c["function"]["arguments"]) for c in calls]
            message["content"] = "\n".join(t for t in texts if t)
        if message.get("role") == "tool":
            message = {
                "role": "user",
                "content": f"<tool_response>\n{message.get('content') or ''}\n</tool_response>",
            }
        message.pop("tool_call_id", None)
        out.append(message)
    if tools:
        described = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
        prompt = _TOOLS_PROMPT.format(tools=described)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out, None


def _template_call(call: Any, param: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ToolError(
            f"{param} must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}", param
        )
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as e:
            raise ToolError(f"{param}.function.arguments is not JSON: {e}", param) from e
    return {**call, "type": "function", "function": {**function, "arguments": arguments}}


def tool_call_grammar(
    tools: Sequence[Tool],
    choice: ToolChoice,
    parallel: bool,
    special_tokens: Collection[str] = (),
) -> str:
    """The Lark grammar (llguidance's dialect) of the output for ``choice`` ("auto",
    "required" or "named": one call); ``parallel`` False allows one call. Once the calls begin,
    only more calls or the end may follow (text after them would be dropped anyway). The tags
    in ``special_tokens`` are single tokens of the tokenizer, named bare in the grammar."""

    def tag(text: str) -> str:
        return text if text in special_tokens else json.dumps(text)

    if choice.mode == "named":  # that function, once (as vLLM and OpenAI force it)
        tools = [t for t in tools if t.name == choice.name]
        parallel = False
    bodies = []
    for tool in tools:
        head = json.dumps(f'\n{{"name": "{tool.name}", "arguments": ')
        schema = json.dumps({**tool.parameters, "x-guidance": _ARGUMENT_STYLE})
        bodies.append(f'{head} %json {schema} "}}\\n" {tag(CLOSE)}')
    more = ' ("\\n" call)*' if parallel else ""
    rules = [
        "%llguidance {}",
        "call: " + " | ".join(f"{tag(OPEN)} {body}" for body in bodies),
    ]
    if choice.mode != "auto":
        rules.append(f"start: call{more}")
    elif OPEN in special_tokens:  # free text cannot hold the token: no lazy lexeme needed
        rules += [f"start: TEXT | TEXT call{more}", "TEXT: /(.|\\n)*/"]
    else:
        # free text, or text up to the first <tool_call> (a lazy lexeme: the shortest text
        # that ends with it) and from there calls held to the schemas
        rules += [
            f"start: TEXT | first{more}",
            "TEXT: /(.|\\n)*/",
            f"open[lazy]: TEXT {json.dumps(OPEN)}",
            "first: " + " | ".join(f"open {body}" for body in bodies),
        ]
    return "\n".join(rules) + "\n"


_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)


def parse_tool_calls(text: str, tools: Sequence[Tool]) -> tuple[Optional[str], list[ToolCall]]:
    """(content, calls) of a model's output: the ``<tool_call>`` blocks (a last one the
    output ends in without its closing tag too, if its JSON is whole), each a JSON object
    ``{"name", "arguments"}`` (or ``"parameters"``) or a list of them, naming one of
    ``tools``. The content is the text before the first block (None if only whitespace).
    Output with no block, or a block that is not such a call, is all content and no calls."""
    start = text.find(OPEN)
    if start < 0:
        return text, []
    names = {t.name for t in tools}
    calls: list[ToolCall] = []
    for match in _BLOCK.finditer(text, start):
        body = match.group(1).strip()
        complete = match.group(0).endswith(CLOSE)
        try:
            value = json.loads(body)
        except ValueError:
            if complete or calls == []:
                return text, []
            break  # a last call cut off (length): the complete ones stand
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict) or item.get("name") not in names:
                return text, []
            arguments = item.get("arguments", item.get("parameters", {}))
            if isinstance(arguments, str):  # some models write the JSON text
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    return text, []
            calls.append(ToolCall(item["name"], json.dumps(arguments, ensure_ascii=False)))
    if not calls:
        return text, []
    content = text[:start].rstrip()
    return content or None, calls


class ToolCallStream:
    """Streams a tool-calling answer: :meth:`feed` releases content as it comes, holding back
    what may be the start of a call (a partial ``<tool_call>`` and trailing whitespace) and
    everything from a call on; :meth:`finish` returns the rest of the content and the calls.
    The content released adds up to :func:`parse_tool_calls`'s (or ``""`` for its None)."""

    def __init__(self, tools: Sequence[Tool]) -> None:
        self.tools = list(tools)
        self.text = ""
        self.released = 0
        self.in_call = False

    def feed(self, delta: str) -> str:
        self.text += delta
        if self.in_call:
            return ""
        text = self.text
        start = text.find(OPEN, max(0, self.released - len(OPEN)))
        if start >= 0:
            self.in_call = True
            upto = start
        else:
            upto = len(text) - _partial_suffix(text, OPEN)
        upto = len(text[:upto].rstrip())
        if upto <= self.released:
            return ""
        out, self.released = text[self.released : upto], upto
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        content, calls = parse_tool_calls(self.text, self.tools)
        return (content or "")[self.released :], calls


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a proper start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
