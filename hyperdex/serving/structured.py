"""Structured outputs: generation constrained to a JSON schema, any JSON object, a regular
expression, a choice of strings or a grammar (Lark or GBNF), with vLLM's names
(:class:`StructuredOutputsParams`; the older :data:`GuidedDecodingParams`).

The grammar engine is llguidance (docs/serving.md says why): a matcher per generation computes
the set of tokens the grammar allows next as a bitmask over the vocabulary; the logits of the
other tokens become -inf before any other processing (as vLLM applies its grammar bitmask to
the raw logits), and every chosen token advances the matcher. It runs on the host, on the
logits the device returns for each step; a request without a constraint pays nothing.

A :class:`GrammarCompiler` belongs to one model and tokenizer (the server's, an ``LLM``'s); it
builds llguidance's view of the tokenizer once, on the first constrained request.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, fields
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

__all__ = [
    "Grammar",
    "GrammarCompiler",
    "GrammarMatcher",
    "GuidedDecodingParams",
    "StructuredOutputError",
    "StructuredOutputsParams",
]

_NEG_INF = np.float32(-np.inf)
# the kinds of constraint, in the order a message names them
_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
# JSON's whitespace as serializers write it: at most one line break, then indentation. Any
# amount (vLLM's default) lets a model spend every token on newlines, and some do.
JSON_WHITESPACE = r"(?:\r?\n)?[\x20\x09]{0,48}"
# schema keywords whose values are JSON values, not schemas
_VALUES = frozenset({"const", "enum", "default", "examples"})


class StructuredOutputError(ValueError):
    """A constraint that cannot be used: ``param`` names the field at fault (the server
    answers 400 naming it)."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class StructuredOutputsParams:
    """vLLM's structured-output parameters (``SamplingParams(structured_outputs=...)``): one
    of ``json`` (a JSON schema, as a dict or its JSON text), ``regex``, ``choice`` (the output
    is one of these strings), ``grammar`` (Lark, or GBNF as llama.cpp writes it) or
    ``json_object`` (any JSON object).

    Between JSON tokens goes whitespace as serializers write it (at most one line break, then
    up to 48 spaces or tabs: :data:`JSON_WHITESPACE`); ``whitespace_pattern`` is a regex for it
    instead, ``disable_any_whitespace`` allows none; ``disable_additional_properties``
    closes every object schema that does not say ``additionalProperties`` itself. vLLM's
    ``backend`` and ``disable_fallback`` are accepted; the backend is always llguidance."""

    json: Optional[Union[str, dict[str, Any]]] = None
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None
    json_object: Optional[bool] = None
    structural_tag: Optional[str] = None
    disable_any_whitespace: bool = False
    disable_fallback: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: Optional[str] = None
    backend: Optional[str] = None

    def __post_init__(self) -> None:
        given = self.kinds()
        if len(given) != 1:
            what = f"{', '.join(given)} are all given" if given else "none is given"
            raise StructuredOutputError(
                f"structured outputs take exactly one of json, regex, choice, grammar and "
                f"json_object; {what}"
            )

    def kinds(self) -> list[str]:
        """The constraints given (one for a valid instance)."""
        return [k for k in _KINDS if getattr(self, k) not in (None, False)]

    @classmethod
    def from_dict(cls, data: Any, param: str) -> StructuredOutputsParams:
        """From a request's JSON object (vLLM's ``structured_outputs`` field)."""
        if not isinstance(data, dict):
            raise StructuredOutputError(f"{param} must be an object", param)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StructuredOutputError(
                f"{param} has unknown field(s) {unknown}; known: {sorted(known)}", param
            )
        try:
            return cls(**data)
        except StructuredOutputError as e:
            raise StructuredOutputError(f"{param}: {e}", param) from None


# vLLM < 0.10's name for the same parameters (SamplingParams(guided_decoding=...))
GuidedDecodingParams = StructuredOutputsParams


@dataclass(frozen=True)
class Grammar:
    """A compiled constraint: llguidance's grammar text, checked against the tokenizer."""

    text: str
    what: str  # the kind of constraint: "json", "regex", "choice", "tool-call grammar", ...


class GrammarMatcher:
    """One generation's grammar state: :meth:`constrain_logits` masks what the grammar
    forbids next, :meth:`accept` advances it by the chosen token, :attr:`done` says the
    grammar is complete (its end-of-sequence token was taken)."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self.vocab_size = vocab_size
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self._check()

    def _check(self) -> None:
        if self._matcher.is_error():
            raise RuntimeError(f"the grammar engine failed: {self._matcher.get_error()}")

    def allowed(self) -> np.ndarray:
        """bool [vocab]: the tokens the grammar allows next."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self._check()
        # bit i of 32-bit word w is token 32 * w + i: little-endian bytes, low bit first
        bits = np.unpackbits(self._bits.view(np.uint8), count=self.vocab_size, bitorder="little")
        return bits.view(bool)

    def constrain_logits(self, logits: np.ndarray) -> np.ndarray:
        """The logits ([vocab] or [1, vocab]) with -inf where the grammar forbids the token;
        a new float32 [vocab] array."""
        row = np.asarray(logits, dtype=np.float32).reshape(-1)
        return np.where(self.allowed(), row, _NEG_INF)

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            raise RuntimeError(
                f"the grammar engine rejected token {int(token)}: {self._matcher.get_error()}"
            )

    @property
    def done(self) -> bool:
        return bool(self._matcher.is_stopped())


class GrammarCompiler:
    """Compiles constraints for one tokenizer and model vocabulary; thread-safe. The
    tokenizer's llguidance view is built on first use (about 0.4 s for a 49k vocabulary)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any) -> GrammarCompiler:
        """For a loaded hyperdex model: its vocabulary and its generation config's eos ids."""
        return cls(tokenizer, int(model.vocab_size), model.generation_config.eos_token_ids)

    def _llg(self) -> Any:
        from ..extras import require_extra

        require_extra("structured outputs", "serve", ["llguidance"])
        import llguidance

        return llguidance

    def ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll_tokenizer is None:
                self._llg()
                import llguidance.hf

                eos = self.eos_token_ids or None
                try:
                    self._ll_tokenizer = llguidance.hf.from_tokenizer(
                        self.tokenizer, n_vocab=self.vocab_size, eos_token=eos
                    )
                except ValueError as e:  # a slow (Python) tokenizer
                    raise StructuredOutputError(
                        f"structured outputs need a fast tokenizer: {e}"
                    ) from e
            return self._ll_tokenizer

    def special_tokens(self, texts: Iterable[str]) -> frozenset[str]:
        """Which of ``texts`` are single added tokens of the tokenizer (Qwen's ``<tool_call>``):
        llguidance counts every added token as special, so a grammar names them bare
        (``<tool_call>``), not as a string the model would have to spell."""
        added = self.tokenizer.get_added_vocab()
        return frozenset(t for t in texts if t in added)

    def compile(self, spec: StructuredOutputsParams, param: str = "structured_outputs") -> Grammar:
        """The checked grammar of ``spec``; StructuredOutputError naming ``param`` and the
        engine's reason when it cannot be compiled."""
        llg = self._llg()
        kind = spec.kinds()[0]
        if kind == "structural_tag":
            raise StructuredOutputError(f"{param}: structural_tag is not supported", param)
        try:
            text = self._grammar_text(llg, spec, kind)
        except (ValueError, TypeError) as e:
            raise StructuredOutputError(f"{param}: invalid {kind}: {e}", param) from e
        return self.check(text, kind, param)

    def compile_lark(self, lark: str, what: str, param: str) -> Grammar:
        """A Lark grammar built by hyperdex itself (tool calls)."""
        return self.check(self._llg().LLMatcher.grammar_from_lark(lark), what, param)

    def check(self, text: str, what: str, param: str) -> Grammar:
        llg = self._llg()
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(text, self.ll_tokenizer())
        if is_error:
            why = messages[0].strip() if messages else "unknown error"
            raise StructuredOutputError(
                f"{param}: the grammar engine cannot compile this {what}: {why}", param
            )
        return Grammar(text, what)

    def matcher(self, grammar: Grammar) -> GrammarMatcher:
        llg = self._llg()
        return GrammarMatcher(
            llg.LLMatcher(self.ll_tokenizer(), grammar.text, log_level=0), self.vocab_size
        )

    @staticmethod
    def _grammar_text(llg: Any, spec: StructuredOutputsParams, kind: str) -> str:
        matcher = llg.LLMatcher
        if kind in ("json", "json_object"):
            schema: Any = {"type": "object"} if kind == "json_object" else spec.json
            if isinstance(schema, str):
                schema = json.loads(schema)
            if not isinstance(schema, (dict, bool)):
                raise ValueError("a JSON schema is an object")
            options: dict[str, Any] = {"whitespace_pattern": JSON_WHITESPACE}
            if spec.disable_any_whitespace:
                options = {"whitespace_flexible": False}
            elif spec.whitespace_pattern is not None:
                options["whitespace_pattern"] = spec.whitespace_pattern
            if spec.disable_additional_properties:
                schema = _closed_objects(schema)
            return str(matcher.grammar_from_json_schema(schema, defaults=options))
        if kind == "regex":
            if not isinstance(spec.regex, str):
                raise ValueError("regex must be a string")
            return str(matcher.grammar_from_regex(spec.regex))
        if kind == "choice":
            choice = spec.choice
            if (
                not isinstance(choice, list)
                or not choice
                or not all(isinstance(c, str) for c in choice)
            ):
                raise ValueError("choice must be a non-empty list of strings")
            return str(matcher.grammar_from_lark("start: " + " | ".join(map(json.dumps, choice))))
        if not isinstance(spec.grammar, str):
            raise ValueError("grammar must be a string (Lark or GBNF)")
        return str(llg.grammar_from("grammar", spec.grammar))


def _closed_objects(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` in every object schema that does not
    set it (vLLM's ``disable_additional_properties``)."""
    if isinstance(schema, list):
        return [_closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _VALUES else _closed_objects(v) for k, v in schema.items()}
    if (schema.get("type") == "object" or "properties" in schema) and (
        "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    return out
