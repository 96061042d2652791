"""Structured outputs and tool calls, with the real ``openai`` client against the real server
(a subprocess on a free loopback port) and through ``hyperdex.vllm``.

Two models: the real SmolLM2 (its chat template ignores tools, so hyperdex describes them in
the system message), and a tiny random Qwen2 with SmolLM2's tokenizer plus ``<tool_call>`` and
``</tool_call>`` as single tokens and a Hermes-style template that renders tools itself (as
Qwen2.5's does). A random model writes no JSON of its own, so on it the constraint alone makes
the output valid: each test also shows the same request unconstrained giving invalid output.
Every JSON answer is checked with ``jsonschema``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
pytest.importorskip("uvicorn")

from serve_helpers import KEY, NAME, post, serving  # noqa: E402
from smollm2 import compiled_smollm2  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {
                "zone": {"enum": ["UTC", "CET", "PST"]},
                "hours24": {"type": "boolean"},
            },
            "required": ["zone", "hours24"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, CLOCK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK_PERSON = [{"role": "user", "content": "Give me a JSON object describing a person."}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]

# Qwen2.5's way with tools, trimmed: they go into the system turn, calls and results are
# written in Hermes's format.
HERMES_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You are provided with function signatures within <tools></tools> XML tags:
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role != 'system' %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def _valid_json(text: str | None, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text or ""), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _check_calls(calls: Any, names: set[str]) -> None:
    """Each call names one of ``names`` and its arguments meet that tool's schema."""
    assert calls, "no tool calls"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names, call
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_path(tmp_path_factory) -> Path:
    return compiled_smollm2(tmp_path_factory)


@pytest.fixture(scope="module")
def smol(smol_path, tmp_path_factory):
    with serving(smol_path, tmp_path_factory.mktemp("serve") / "smol.log") as (_, base):
        yield base


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    """The tiny random Qwen2 with SmolLM2's tokenizer, tool tokens and the Hermes template."""
    from helpers import CONFIGS, make_hf_model
    from transformers import AutoTokenizer

    from hyperdex.tools.real_weights import smollm2_hf_folder

    try:
        source = smollm2_hf_folder()
    except Exception as e:  # the package is installed by scripts/setup.sh
        pytest.skip(f"SmolLM2's tokenizer is unavailable: {e}")
    tok = AutoTokenizer.from_pretrained(source)
    tok.add_tokens(["<tool_call>", "</tool_call>"])  # single tokens, not special (as Qwen's)
    tok.chat_template = HERMES_TEMPLATE
    folder = tmp_path_factory.mktemp("tiny-tools") / "tiny-qwen2-tools"
    config = CONFIGS["qwen2"][0](vocab_size=len(tok), max_position_embeddings=1024)
    config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    make_hf_model("qwen2", folder, seed=3, config=config)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_path(tiny_hf, tmp_path_factory) -> Path:
    from helpers import compile_model

    prefix = tmp_path_factory.mktemp("tiny-tools-compiled")
    return Path(compile_model(tiny_hf, prefix, max_length=1024))


@pytest.fixture(scope="module")
def tiny(tiny_path, tmp_path_factory):
    with serving(tiny_path, tmp_path_factory.mktemp("serve") / "tiny.log") as (_, base):
        yield base


def _client(base: str) -> Any:
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture()
def smol_client(smol):
    c = _client(smol)
    yield c
    c.close()


@pytest.fixture()
def tiny_client(tiny):
    c = _client(tiny)
    yield c
    c.close()


def _token_id(base: str, text: str) -> int:
    status, body = post(base, "/tokenize", {"prompt": text, "add_special_tokens": False})
    assert status == 200 and len(body["tokens"]) == 1, body
    return body["tokens"][0]


# -- response_format and vLLM's structured-output fields ------------------------------------------


def test_json_schema_response_format(smol_client) -> None:
    kw = dict(model=NAME, messages=ASK_PERSON, max_tokens=80, temperature=0)
    free = smol_client.chat.completions.create(**kw).choices[0].message.content
    assert not _valid_json(free, PERSON), free  # SmolLM2 alone wraps it in prose
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    reply = smol_client.chat.completions.create(response_format=fmt, **kw)
    text = reply.choices[0].message.content
    assert _valid_json(text, PERSON), text
    assert reply.choices[0].finish_reason == "stop"
    # streamed: the same text
    chunks = smol_client.chat.completions.create(response_format=fmt, stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_json_object_response_format(smol_client) -> None:
    messages = [{"role": "user", "content": "Give me a JSON object with the keys name and age."}]
    kw = dict(model=NAME, messages=messages, max_tokens=80, temperature=0)
    free = smol_client.chat.completions.create(**kw).choices[0].message.content
    assert not _valid_json(free, {"type": "object"}), free
    reply = smol_client.chat.completions.create(response_format={"type": "json_object"}, **kw)
    text = reply.choices[0].message.content
    assert _valid_json(text, {"type": "object"}), text
    assert reply.choices[0].finish_reason == "stop"


def test_vllm_fields_on_completions(smol_client) -> None:
    kw = dict(model=NAME, max_tokens=12, temperature=0)
    prompt = "Is the sky green? Answer:"
    free = smol_client.completions.create(prompt=prompt, **kw).choices[0].text
    assert free not in ("yes", "no"), free
    # vLLM's older field, then its current one: the same answer
    old = smol_client.completions.create(
        prompt=prompt, extra_body={"guided_choice": ["yes", "no"]}, **kw
    )
    new = smol_client.completions.create(
        prompt=prompt, extra_body={"structured_outputs": {"choice": ["yes", "no"]}}, **kw
    )
    assert old.choices[0].text in ("yes", "no") and new.choices[0].text == old.choices[0].text
    regex = r"[0-9]{3}-[0-9]{4}"
    phone = smol_client.completions.create(
        prompt="Call me at", extra_body={"guided_regex": regex}, **kw
    ).choices[0]
    assert re.fullmatch(regex, phone.text) and phone.finish_reason == "stop", phone
    person = smol_client.chat.completions.create(
        messages=ASK_PERSON,
        extra_body={"guided_json": PERSON},
        **{**kw, "max_tokens": 80},
    ).choices[0]
    assert _valid_json(person.message.content, PERSON), person


def test_json_on_a_random_model_is_valid_by_the_constraint_alone(tiny_client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "size": {"enum": ["small", "large"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 99},
            "fresh": {"type": "boolean"},
            "note": {"type": "string", "maxLength": 12},
        },
        "required": ["size", "count", "fresh", "note"],
        "additionalProperties": False,
    }
    kw = dict(model=NAME, messages=ASK_PERSON, max_tokens=60, temperature=0)
    free = tiny_client.chat.completions.create(**kw).choices[0].message.content
    assert not _valid_json(free, schema), free
    spec = {"json": schema, "disable_any_whitespace": True}
    for seed in range(3):  # sampled too: any token the model picks is one the schema allows
        reply = tiny_client.chat.completions.create(
            extra_body={"structured_outputs": spec}, **{**kw, "temperature": 1.0, "seed": seed}
        )
        text = reply.choices[0].message.content
        assert _valid_json(text, schema) and not text.startswith("{ "), text


@pytest.mark.parametrize(
    "extra, param, says",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"not": {}}},
                }
            },
            "response_format.json_schema.schema",
            '["not"]',
        ),
        ({"guided_json": {"type": "foo"}}, "guided_json", "Invalid type: foo"),
        (
            {"guided_json": {"type": "integer", "minimum": 5, "maximum": 1}},
            "guided_json",
            "minimum (5)",
        ),
        ({"guided_regex": "(("}, "guided_regex", "unclosed group"),
        ({"guided_grammar": "start: nothing_here"}, "guided_grammar", "nothing_here"),
        ({"structured_outputs": {"json": {}, "regex": "a"}}, "structured_outputs", "exactly one"),
        ({"structured_outputs": {"jsn": {}}}, "structured_outputs", "unknown field"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
        (
            {"response_format": {"type": "json_object"}, "guided_regex": "a+"},
            "guided_regex",
            "one structured output",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
                ]
            },
            "tools.0.function.parameters",
            "Invalid type: nope",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
            "tools.0.function.name",
            "letters, digits",
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice",
            "'g'",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "tool_choice",
            "cannot be combined",
        ),
        # the grammar may end the output before min_tokens (its eos mask would forbid all)
        ({"response_format": {"type": "json_object"}, "min_tokens": 3}, "min_tokens", "drop"),
    ],
)
def test_what_the_grammar_engine_cannot_compile_is_a_400_naming_it(
    smol, extra, param, says
) -> None:
    body = {"model": NAME, "messages": ASK_PERSON, "max_tokens": 4, **extra}
    status, answer = post(smol, "/v1/chat/completions", body)
    assert status == 400, answer
    error = answer["error"]
    assert error["param"] == param and says in error["message"], error


def test_a_bad_schema_reaches_the_openai_client_as_a_400(smol_client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}
    with pytest.raises(openai.BadRequestError) as info:
        smol_client.chat.completions.create(
            model=NAME, messages=ASK_PERSON, max_tokens=4, response_format=fmt
        )
    assert "Invalid type: strin" in str(info.value)


# -- tools ---------------------------------------------------------------------------------------


def test_tool_choice_named_and_required(smol_client) -> None:
    kw = dict(model=NAME, messages=ASK_WEATHER, max_tokens=120, temperature=0, tools=TOOLS)
    free = smol_client.chat.completions.create(tool_choice="none", **kw).choices[0]
    assert free.message.tool_calls is None and free.finish_reason == "stop"
    assert "<tool_call>" not in free.message.content  # SmolLM2 does not call tools by itself

    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = smol_client.chat.completions.create(tool_choice=named, **kw).choices[0]
    assert reply.finish_reason == "tool_calls" and reply.message.content is None
    _check_calls(reply.message.tool_calls, {"get_weather"})
    assert len(reply.message.tool_calls) == 1  # a named function is called once
    assert json.loads(reply.message.tool_calls[0].function.arguments)["city"] == "Paris"

    once = smol_client.chat.completions.create(
        tool_choice="required", parallel_tool_calls=False, **kw
    ).choices[0]
    assert once.finish_reason == "tool_calls" and len(once.message.tool_calls) == 1
    _check_calls(once.message.tool_calls, set(SCHEMAS))
    many = smol_client.chat.completions.create(tool_choice="required", **kw).choices[0]
    _check_calls(many.message.tool_calls, set(SCHEMAS))
    assert many.finish_reason == "tool_calls"


def test_tool_calls_stream_as_the_openai_client_reads_them(smol_client) -> None:
    kw = dict(model=NAME, messages=ASK_WEATHER, max_tokens=120, temperature=0, tools=TOOLS)
    plain = smol_client.chat.completions.create(tool_choice="required", **kw).choices[0]
    with smol_client.chat.completions.stream(tool_choice="required", **kw) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and not final.message.content
    got = [(c.function.name, c.function.arguments) for c in final.message.tool_calls]
    assert got == [(c.function.name, c.function.arguments) for c in plain.message.tool_calls]
    # the raw chunks: a tool call's first delta names it, with its id and type
    chunks = list(smol_client.chat.completions.create(tool_choice="required", stream=True, **kw))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].index == 0 and deltas[0].id.startswith("call_")
    assert deltas[0].type == "function" and deltas[0].function.name == got[0][0]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_without_a_call_is_text(smol_client) -> None:
    reply = smol_client.chat.completions.create(
        model=NAME, messages=ASK_WEATHER, max_tokens=40, temperature=0, tools=TOOLS
    ).choices[0]
    assert reply.message.tool_calls is None and reply.message.content
    assert reply.finish_reason in ("stop", "length")


def test_auto_tool_call_is_decoded_under_the_schema(tiny, tiny_client) -> None:
    # logit_bias makes the random model open a call at once, and end when it may; the call
    # itself, token by token, is whatever the grammar allows
    bias = {str(_token_id(tiny, "<tool_call>")): 100, str(_token_id(tiny, "<|im_end|>")): 50}
    kw = dict(model=NAME, messages=ASK_WEATHER, max_tokens=80, temperature=0, tools=TOOLS)
    free = tiny_client.chat.completions.create(tool_choice="none", logit_bias=bias, **kw)
    assert free.choices[0].message.content.startswith("<tool_call><tool_call>")  # no call
    assert free.choices[0].message.tool_calls is None
    for seed in range(3):
        reply = tiny_client.chat.completions.create(
            logit_bias=bias, **{**kw, "temperature": 1.0, "seed": seed}
        ).choices[0]
        assert reply.finish_reason == "tool_calls" and reply.message.content is None
        _check_calls(reply.message.tool_calls, set(SCHEMAS))
    with tiny_client.chat.completions.stream(logit_bias=bias, **kw) as stream:
        final = stream.get_final_completion().choices[0]
    plain = tiny_client.chat.completions.create(logit_bias=bias, **kw).choices[0]
    assert [c.function.arguments for c in final.message.tool_calls] == [
        c.function.arguments for c in plain.message.tool_calls
    ]


def test_required_on_a_random_model(tiny_client) -> None:
    kw = dict(model=NAME, messages=ASK_WEATHER, max_tokens=150, tools=TOOLS)
    for seed in range(3):
        reply = tiny_client.chat.completions.create(
            tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=seed, **kw
        ).choices[0]
        assert reply.finish_reason == "tool_calls" and len(reply.message.tool_calls) == 1
        _check_calls(reply.message.tool_calls, set(SCHEMAS))
    clock = {"type": "function", "function": {"name": "get_time"}}
    reply = tiny_client.chat.completions.create(tool_choice=clock, temperature=0, **kw).choices[0]
    assert [c.function.name for c in reply.message.tool_calls] == ["get_time"]
    _check_calls(reply.message.tool_calls, {"get_time"})


def test_legacy_functions(smol_client) -> None:
    functions = [t["function"] for t in TOOLS]
    reply = smol_client.chat.completions.create(
        model=NAME,
        messages=ASK_WEATHER,
        max_tokens=120,
        temperature=0,
        functions=functions,
        function_call={"name": "get_weather"},
    ).choices[0]
    assert reply.finish_reason == "function_call" and reply.message.tool_calls is None
    call = reply.message.function_call
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), SCHEMAS["get_weather"])


def test_templates_render_tools(smol, tiny, tiny_hf) -> None:
    from transformers import AutoTokenizer

    history = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    # a template that renders tools: hyperdex's prompt is transformers' own, with the call's
    # arguments as an object (templates write them with tojson, as vLLM passes them)
    status, ours = post(tiny, "/tokenize", {"messages": history, "tools": TOOLS})
    assert status == 200, ours
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    parsed = json.loads(json.dumps(history))
    parsed[1]["tool_calls"][0]["function"]["arguments"] = {"city": "Paris"}
    want = tok.apply_chat_template(parsed, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert ours["tokens"] == tok(want, add_special_tokens=False).input_ids
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in want
    # SmolLM2's template ignores tools: they are described in the system turn instead
    status, with_tools = post(smol, "/tokenize", {"messages": history, "tools": TOOLS})
    assert status == 200, with_tools
    status, text = post(smol, "/detokenize", {"tokens": with_tools["tokens"]})
    prompt = text["prompt"]
    assert "<tools>" in prompt and '"name": "get_time"' in prompt, prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt


def test_tool_calls_parse_alike_streamed_or_not() -> None:
    from hyperdex.serving.tool_calls import ToolCallStream, parse_tool_calls, parse_tools

    tools = parse_tools(TOOLS)
    time_args = {"zone": "UTC", "hours24": True}
    call = f"<tool_call>\n{json.dumps({'name': 'get_time', 'arguments': time_args})}\n</tool_call>"
    oslo = [{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}]
    smol = f"<tool_call>{json.dumps(oslo)}</tool_call>"
    cases = [  # text, content (None: the text itself), names of the calls
        ("plain text", None, []),
        (f"Sure.  \n{call}", "Sure.", ["get_time"]),
        (f"\n{call}\n{call}", "", ["get_time", "get_time"]),
        (f'{call}\n<tool_call>\n{{"name": "get_ti', "", ["get_time"]),  # the last one cut off
        (smol, "", ["get_weather"]),  # SmolLM2's list, Llama's "parameters"
        ('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', None, []),  # no such tool
        ("a <tool_call>not json</tool_call>", None, []),
        ("ends in <tool_c", None, []),
    ]
    for text, content, names in cases:
        want = text if content is None else content
        got, calls = parse_tool_calls(text, tools)
        assert (got or "") == want and [c.name for c in calls] == names, text
        for call_ in calls:
            jsonschema.validate(json.loads(call_.arguments), SCHEMAS[call_.name])
        for size in (1, 3, 7, len(text)):  # streamed in pieces: the same content and calls
            stream = ToolCallStream(tools)
            pieces = [stream.feed(text[i : i + size]) for i in range(0, len(text), size)]
            rest, streamed = stream.finish()
            assert "".join(pieces) + rest == want, (text, size)
            assert [(c.name, c.arguments) for c in streamed] == [
                (c.name, c.arguments) for c in calls
            ]
            if calls:  # nothing of a call leaked out as content
                assert "<tool_c" not in "".join(pieces)


# -- the vLLM-style API --------------------------------------------------------------------------


def test_vllm_structured_outputs(smol_path) -> None:
    from hyperdex.vllm import LLM, GuidedDecodingParams, SamplingParams, StructuredOutputsParams

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUM_LPU_DEVICES", "1")
        mp.delenv("NUM_GPU_DEVICES", raising=False)
        llm = LLM(model=str(smol_path))

    def one(prompt: str, max_tokens: int = 16, **structured: Any) -> str:
        spec = StructuredOutputsParams(**structured) if structured else None
        params = SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=spec)
        return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].text

    prompt = "A JSON object describing a person:"
    assert not _valid_json(one(prompt, 80), PERSON)
    assert _valid_json(one(prompt, 80, json=PERSON), PERSON)
    assert _valid_json(one(prompt, 80, json=json.dumps(PERSON)), PERSON)  # as JSON text
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", one("Call me at", regex=r"[0-9]{3}-[0-9]{4}"))
    assert one("Is the sky green? Answer:", choice=["yes", "no"]) in ("yes", "no")
    # vLLM's older name
    old = SamplingParams(
        temperature=0, max_tokens=8, guided_decoding=GuidedDecodingParams(choice=["yes", "no"])
    )
    assert llm.generate("Is the sky green? Answer:", old, use_tqdm=False)[0].outputs[0].text in (
        "yes",
        "no",
    )
    chat = llm.chat(
        ASK_WEATHER,
        SamplingParams(
            temperature=0,
            max_tokens=120,
            structured_outputs=StructuredOutputsParams(json=SCHEMAS["get_weather"]),
        ),
        use_tqdm=False,
        tools=TOOLS,
    )[0]
    assert _valid_json(chat.outputs[0].text, SCHEMAS["get_weather"])
    assert "<tools>" in llm.get_tokenizer().decode(chat.prompt_token_ids)
    with pytest.raises(ValueError, match="Unimplemented keys"):
        one(prompt, json={"not": {"type": "string"}})
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(json=PERSON, regex="a")
