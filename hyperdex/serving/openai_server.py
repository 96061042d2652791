"""An OpenAI-compatible HTTP server (Starlette on uvicorn) for one compiled model.

Endpoints: ``GET /health`` (503 while the model loads), ``GET /metrics`` (Prometheus, vLLM's
names), ``GET /version``, ``POST /tokenize`` and ``POST /detokenize`` (vLLM's shapes),
``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``,
``POST /v1/chat/completions``. Requests carry OpenAI's fields (``n``, ``logprobs``,
``top_logprobs``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ...) plus vLLM's
extra sampling ones (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``,
``ignore_eos``, ``stop_token_ids``, ``prompt_logprobs``, ...); fields it does not know are
ignored with a warning, as vLLM does, except those that would change the output and cannot be
honoured (beam search, ...), which get a 400 naming the option. Structured outputs
(``response_format``, vLLM's ``structured_outputs`` and ``guided_*``) and tool calls (``tools``,
``tool_choice``, the legacy ``functions``) constrain the output with a grammar
(:mod:`.structured`, :mod:`.tool_calls`).
``stream: true`` answers with Server-Sent Events: for chat a first chunk with the role per
choice, content deltas, a chunk with ``finish_reason``, a usage chunk when
``stream_options.include_usage``, then ``data: [DONE]``. Errors have OpenAI's body
(``{"error": {"message", "type", "param", "code"}}``) and status codes.

The device runs one sequence at a time: requests (and each of the ``n`` choices of one) wait
in a :class:`~.engine.FairQueue` (round-robin over clients: the request's ``user``, else its
address) for the engine's worker thread. A client that disconnects cancels its request, queued
or running, so the device moves on to the next one.

Bodies are limited in size (413 past ``max_request_bytes``, checked on Content-Length and while
reading), and parsed, validated and tokenized on a small thread pool, never on the event loop:
a huge prompt does not stall ``/health`` or other clients' streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..extras import MissingExtraError
from ..transformers.streamers import format_sse
from .engine import (
    MAX_LOGPROBS,
    Delta,
    Engine,
    GenerationResult,
    Job,
    PromptTooLong,
    Sampling,
    TokenLogprob,
    TokenTexts,
    token_budget,
)
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .structured import Grammar, GrammarCompiler, StructuredOutputError, StructuredOutputsParams
from .tool_calls import (
    CLOSE,
    OPEN,
    Tool,
    ToolCall,
    ToolCallStream,
    ToolError,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
    template_handles_tools,
    template_messages,
    tool_call_grammar,
)

log = logging.getLogger("hyperdex.serve")

DEFAULT_MAX_REQUEST_BYTES = 4 << 20
PREP_THREADS = 2  # parse + tokenize; bounds the memory that huge prompts take at once
DRAIN_BYTES, DRAIN_S = 16 << 20, 5.0  # read and dropped past the limit before the 413
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone one: valid pairs decode to one char
LOGPROB_FLOOR = -9999.0  # vLLM's: -inf is not JSON
LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range for logit_bias values (vLLM clamps to it)
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------


class _Body(BaseModel):
    # fields no class names are kept (model_extra) so they can be refused or warned about
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _SamplingFields(_Body):
    model: str
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None
    # vLLM's extra sampling parameters
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: Optional[list[int]] = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: Optional[int] = None
    return_tokens_as_token_ids: bool = False  # logprobs name tokens "token_id:<id>"
    # structured outputs: OpenAI's, vLLM's, and vLLM's older fields (one of them at most)
    response_format: Optional[dict[str, Any]] = None
    structured_outputs: Optional[dict[str, Any]] = None
    guided_json: Optional[Union[str, dict[str, Any]]] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    guided_whitespace_pattern: Optional[str] = None
    guided_decoding_backend: Optional[str] = None  # accepted: the backend is llguidance


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = 16  # OpenAI's default for completions
    echo: bool = False
    logprobs: Optional[int] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    parallel_tool_calls: Optional[bool] = None
    functions: Optional[list[Any]] = None  # OpenAI's legacy tools
    function_call: Optional[Any] = None  # ... and tool_choice
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: Optional[dict[str, Any]] = None


class TokenizeRequest(_Body):
    """vLLM's /tokenize: a ``prompt`` (special tokens added by default) or chat ``messages``
    (through the chat template; no special tokens added by default)."""

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    tools: Optional[list[Any]] = None
    add_special_tokens: Optional[bool] = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: Optional[dict[str, Any]] = None
    return_token_strs: bool = False


class DetokenizeRequest(_Body):
    model: Optional[str] = None
    tokens: list[int]


_BEAM = (
    "beam search is not supported: the LPU decodes one sequence at a time; use temperature=0 "
    "for greedy search, or n with sampling for several answers"
)
# Fields no request class names that change the output when honoured: ignoring them would
# answer something else than was asked, so a value other than these no-op ones is a 400.
_REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_beam_search": ((None, False), _BEAM),
    "best_of": ((None, 1), "only best_of=1 is supported; use n for several answers"),
    "length_penalty": ((None, 1.0), f"only applies to beam search; {_BEAM}"),
    "early_stopping": ((None, False), f"only applies to beam search; {_BEAM}"),
    "suffix": ((None, ""), "is not supported (no fill-in-the-middle); put the text in the prompt"),
    "allowed_token_ids": ((None,), "is not supported; use logit_bias (-100 bans a token)"),
    "bad_words": ((None, []), "is not supported; use logit_bias (-100 bans a token)"),
}


@dataclass
class _ToolPlan:
    """How a chat request's answer is read for tool calls (tool_choice other than "none")."""

    tools: list[Tool]
    legacy: bool  # functions / function_call: answered with message.function_call

    def message_fields(self, calls: list[ToolCall]) -> dict[str, Any]:
        if self.legacy:
            return {"function_call": {"name": calls[0].name, "arguments": calls[0].arguments}}
        return {"tool_calls": [c.as_openai() for c in calls]}

    def stream_fields(self, calls: list[ToolCall]) -> dict[str, Any]:
        """The delta that carries the calls, as the openai client joins them."""
        if self.legacy:
            return self.message_fields(calls)
        return {"tool_calls": [{"index": i, **c.as_openai()} for i, c in enumerate(calls)]}

    def finish_reason(self, reason: str, calls: list[ToolCall]) -> str:
        if calls and reason == "stop":
            return "function_call" if self.legacy else "tool_calls"
        return reason


class ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _unsupported(param: str, why: str) -> ApiError:
    return ApiError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


def _with_grammar(sampling: Sampling, grammar: Optional[Grammar]) -> Sampling:
    """``sampling`` constrained by ``grammar``; an option that cannot go with a grammar
    (min_tokens) is a 400 naming it."""
    try:
        return sampling.replace(grammar=grammar)
    except ValueError as e:
        param = e.args[1] if len(e.args) > 1 else None
        raise ApiError(400, str(e.args[0]), param=param, code="invalid_value") from e


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _load_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; ApiError 400 for anything else, never another exception."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as e:  # Python's parser recurses per level
        raise ApiError(400, "The JSON body is nested too deeply.") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, ints past the digit limit
        why = str(e)
        if "integer string conversion" in why:
            why = "a number has too many digits"
        raise ApiError(
            400,
            f"We could not parse the JSON body of your request ({why}). The body must be "
            "a JSON object.",
        ) from e
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    _check_strings(data)
    return data


def _check_strings(data: Any) -> None:
    """400 for a string holding a lone surrogate (JSON allows "\\ud800"): UTF-8 cannot carry
    it, so the tokenizer, the error messages and the answer would fail on it."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                param = ".".join(map(str, where))
                raise ApiError(
                    400,
                    f"Invalid value for '{param}': it holds a lone UTF-16 surrogate, which is "
                    "not valid Unicode text.",
                    param=param,
                )
        elif isinstance(value, dict):
            for k, v in value.items():
                if _SURROGATE.search(k):
                    raise ApiError(400, "A key in the request holds a lone UTF-16 surrogate.")
                stack.append((v, (*where, k)))
        elif isinstance(value, list):  # numbers (token ids: many) need no look
            stack.extend(
                (v, (*where, i)) for i, v in enumerate(value) if isinstance(v, (str, dict, list))
            )


def _validation_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err.get("loc", ())) or None
    if err.get("type") == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param)
    return ApiError(400, f"Invalid value for '{param}': {err.get('msg')}", param=param)


# --------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------


def _check_top(param: str, value: Optional[int]) -> None:
    """How many top log-probabilities a request may ask for: vLLM's default max_logprobs."""
    if value is not None and not 0 <= value <= MAX_LOGPROBS:
        raise ApiError(
            400,
            f"{param} must be from 0 to {MAX_LOGPROBS}, got {value}",
            param=param,
            code="invalid_value",
        )


def _clamp(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


class OpenAIServer:
    """The state behind the routes: the model, its tokenizer, the engine, the API key, the
    metrics. The model may come later (:meth:`attach`, from the loader thread): until then
    ``/health`` answers 503 and the routes that need the model answer 503 ``model_loading``."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        served_model_name: str,
        api_key: Optional[str] = None,
        max_queue: int = 256,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if max_request_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
        self.name = served_model_name
        self.api_key = api_key or None
        self.max_queue = int(max_queue)
        self.max_request_bytes = int(max_request_bytes)
        self.model: Any = None
        self.tokenizer: Any = None
        self.grammars: Optional[GrammarCompiler] = None
        self.engine: Optional[Engine] = None  # set last by attach(): the server is ready
        self.load_error: Optional[BaseException] = None
        self.metrics = ServerMetrics(served_model_name, self._running, self._waiting)
        self.prep = ThreadPoolExecutor(PREP_THREADS, thread_name_prefix="hyperdex-prep")
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # set by the lifespan
        self.stopping = False  # jobs were cancelled for shutdown: new ones are refused
        self._shutdown_begun = False
        self._lock = threading.Lock()  # attach() against start() and close()
        self._started = self._closed = False
        self.token_str: Callable[[int], str] = str  # TokenTexts(tokenizer) once loaded
        self.created = int(time.time())
        if model is not None:
            self.attach(model, tokenizer)

    # -- life cycle ---------------------------------------------------------------------------

    def attach(self, model: Any, tokenizer: Any) -> None:
        """Serves ``model`` from now on (once loaded)."""
        # the first call settles a fast tokenizer's padding/truncation state (a mutation);
        # made here, the prep threads only ever read it ("Already borrowed" otherwise)
        tokenizer("warm-up")
        grammars = GrammarCompiler.for_model(model, tokenizer)
        engine = Engine(
            model, tokenizer, self.max_queue, on_finish=self.metrics.finished, grammars=grammars
        )
        with self._lock:
            if self._closed:  # shut down while loading
                return
            self.model, self.tokenizer, self.grammars = model, tokenizer, grammars
            self.token_str = TokenTexts(tokenizer)
            if self._started:
                engine.start()
            self.engine = engine

    def start(
        self,
        loader: Optional[Callable[[], tuple[Any, Any]]] = None,
        on_load_failed: Optional[Callable[[BaseException], None]] = None,
    ) -> None:
        """Starts the engine, or ``loader()`` on a thread of its own when there is no model
        yet (the server answers meanwhile: /health with 503)."""
        with self._lock:
            self._started = True
            if self.engine is not None:
                self.engine.start()
        if loader is not None and self.engine is None:

            def load() -> None:
                try:
                    self.attach(*loader())
                except BaseException as e:  # reported; the server cannot serve without it
                    self.load_error = e
                    if on_load_failed is None:
                        log.exception("loading the model failed")
                    else:
                        on_load_failed(e)

            threading.Thread(target=load, name="hyperdex-load", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            engine = self.engine
        self.prep.shutdown(wait=False, cancel_futures=True)
        if engine is not None:
            engine.shutdown()

    def ready(self) -> Engine:
        """The engine, or 503 while the model loads."""
        engine = self.engine
        if engine is None:
            why = "failed to load" if self.load_error is not None else "is still loading"
            raise ApiError(
                503,
                f"The model {why}; retry once GET /health answers 200.",
                type_="server_error",
                code="model_loading",
            )
        return engine

    def _running(self) -> int:
        engine = self.engine
        return int(engine is not None and engine.running is not None)

    def _waiting(self) -> int:
        engine = self.engine
        return 0 if engine is None else len(engine.queue)

    # -- checks ------------------------------------------------------------------------------

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.api_key.encode()
        ):
            raise ApiError(
                401,
                "Incorrect API key provided. Pass the server's key as 'Authorization: Bearer "
                "<key>'.",
                code="invalid_api_key",
            )

    async def too_large(self, request: Request, declared: Optional[int] = None) -> ApiError:
        """The 413. Up to DRAIN_BYTES more of the body are read first and dropped: a client
        that sends its whole body before reading (urllib, curl with Connection: close) then
        gets the 413 instead of a broken pipe. Larger bodies are cut off at once."""
        if declared is None or declared <= self.max_request_bytes + DRAIN_BYTES:

            async def drain() -> None:
                drained = 0
                async for chunk in request.stream():
                    drained += len(chunk)
                    if drained > DRAIN_BYTES:
                        return

            with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect):
                await asyncio.wait_for(drain(), DRAIN_S)
        return ApiError(
            413,
            f"The request body is larger than this server's limit of {self.max_request_bytes} "
            "bytes (hdex-serve --max-request-bytes).",
            code="request_too_large",
        )

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 from its Content-Length or as soon as it passes the limit;
        never buffered past the limit."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "Content-Length must be a number of bytes.")
            size = int(declared) if len(declared) <= 18 else 1 << 62
            if size > self.max_request_bytes:
                raise await self.too_large(request, size)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_request_bytes:
                raise await self.too_large(request)
            chunks.append(chunk)
        return b"".join(chunks)

    async def prepare(self, request: Request, build: Callable[[bytes], T]) -> T:
        """Checks the key and that the model is loaded, reads the body, then ``build(body)``
        on the prep pool: JSON parsing, validation and tokenization take long for big prompts
        and must not stall the loop."""
        self.check_key(request)
        self.ready()
        try:
            raw = await self.read_body(request)
        except ClientDisconnect:  # gone while sending: nobody reads the answer, nothing failed
            raise ApiError(499, "client closed the request", code="client_closed") from None
        return await asyncio.get_running_loop().run_in_executor(self.prep, build, raw)

    def parse(self, raw: bytes, cls: type[_Body]) -> Any:
        data = _load_json(raw)
        try:
            body = cls.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e) from e
        self.check_extras(body)
        model = getattr(body, "model", None)
        if model is not None and model != self.name:
            raise ApiError(
                404,
                f"The model `{model}` does not exist. This server serves `{self.name}`.",
                param="model",
                code="model_not_found",
            )
        return body

    @staticmethod
    def check_extras(body: _Body) -> None:
        """Fields no request class names: 400 for those that would change the answer and
        cannot be honoured (beam search, ...), a warning for the rest, as vLLM logs them."""
        extras = dict(body.model_extra or {})
        options = getattr(body, "stream_options", None)
        if isinstance(options, _Body):
            extras.update(
                {f"stream_options.{k}": v for k, v in (options.model_extra or {}).items()}
            )
        for name, value in extras.items():
            refused = _REFUSED.get(name)
            if refused is not None and value not in refused[0]:
                raise _unsupported(name, refused[1])
        if extras:
            log.warning(
                "The following fields were present in the request but ignored: %s",
                sorted(extras),
            )

    def sampling(
        self,
        body: _SamplingFields,
        max_tokens: Optional[int],
        logprobs: Optional[int] = None,
        prompt_logprobs: Optional[int] = None,
    ) -> Sampling:
        if not 1 <= body.n <= self.max_queue:
            raise ApiError(
                400,
                f"n must be from 1 to {self.max_queue} (the queue's size), got {body.n}",
                param="n",
                code="invalid_value",
            )
        try:
            return Sampling(
                max_tokens=max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                top_k=0 if body.top_k is None else body.top_k,
                min_p=0.0 if body.min_p is None else body.min_p,
                repetition_penalty=(
                    1.0 if body.repetition_penalty is None else body.repetition_penalty
                ),
                presence_penalty=body.presence_penalty or 0.0,
                frequency_penalty=body.frequency_penalty or 0.0,
                logit_bias=self.logit_bias(body.logit_bias),
                seed=body.seed,
                stop=body.stop or [],
                stop_token_ids=body.stop_token_ids or [],
                ignore_eos=body.ignore_eos,
                min_tokens=body.min_tokens,
                skip_special_tokens=body.skip_special_tokens,
                include_stop_str_in_output=body.include_stop_str_in_output,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
            )
        except ValueError as e:
            param = e.args[1] if len(e.args) > 1 else None
            raise ApiError(400, str(e.args[0]), param=param, code="invalid_value") from e

    def logit_bias(self, bias: Optional[dict[str, float]]) -> dict[int, float]:
        """OpenAI's ``logit_bias``: token ids as strings, values clamped to [-100, 100]."""
        vocab = int(self.model.vocab_size)
        out: dict[int, float] = {}
        for key, value in (bias or {}).items():
            if not key.isdigit() or len(key) > 18 or int(key) >= vocab:
                raise ApiError(
                    400,
                    f"logit_bias keys must be token ids in [0, {vocab}), got {key[:40]!r}",
                    param="logit_bias",
                    code="invalid_value",
                )
            if not math.isfinite(value):
                raise ApiError(400, "logit_bias values must be finite", param="logit_bias")
            out[int(key)] = min(LOGIT_BIAS_LIMIT, max(-LOGIT_BIAS_LIMIT, float(value)))
        return out

    def check_ids(self, ids: list[int], param: str, allow_empty: bool = False) -> list[int]:
        vocab = int(self.model.vocab_size)
        if not ids and not allow_empty:
            raise ApiError(400, f"{param} is empty", param=param)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ApiError(
                400, f"{param} holds token id {bad[0]}, outside [0, {vocab})", param=param
            )
        return ids

    def check_budget(self, prompt_ids: list[int], sampling: Sampling, param: str) -> None:
        try:
            token_budget(self.model, len(prompt_ids), sampling.max_tokens)
        except PromptTooLong as e:
            raise ApiError(400, str(e), param=param, code="context_length_exceeded") from e

    # -- structured outputs and tools --------------------------------------------------------

    def structured_spec(
        self, body: _SamplingFields
    ) -> Optional[tuple[StructuredOutputsParams, str]]:
        """The request's structured-output constraint and the field it came from, or None:
        ``response_format`` (OpenAI's), ``structured_outputs`` (vLLM's) or ``guided_*`` (vLLM's
        older names); one of them at most."""
        found: list[tuple[StructuredOutputsParams, str]] = []
        try:
            rf = body.response_format
            kind = None if rf is None else rf.get("type")
            if kind == "json_object":
                found.append((StructuredOutputsParams(json_object=True), "response_format"))
            elif kind == "json_schema":
                spec = rf.get("json_schema") if rf is not None else None
                if not isinstance(spec, dict):
                    raise StructuredOutputError(
                        "response_format.json_schema must be an object {name, schema, strict}",
                        "response_format.json_schema",
                    )
                schema = spec.get("schema")
                found.append(
                    (
                        StructuredOutputsParams(json_object=True)
                        if schema is None
                        else StructuredOutputsParams(json=schema),
                        "response_format.json_schema.schema",
                    )
                )
            elif kind not in (None, "text"):
                raise StructuredOutputError(
                    f"response_format.type must be 'text', 'json_object' or 'json_schema', "
                    f"got {json.dumps(kind)[:60]}",
                    "response_format.type",
                )
            if body.structured_outputs is not None:
                param = "structured_outputs"
                spec = StructuredOutputsParams.from_dict(body.structured_outputs, param)
                found.append((spec, param))
            for kind in ("json", "regex", "choice", "grammar"):
                value = getattr(body, f"guided_{kind}")
                if value is not None:
                    spec = StructuredOutputsParams(
                        **{kind: value}, whitespace_pattern=body.guided_whitespace_pattern
                    )
                    found.append((spec, f"guided_{kind}"))
        except StructuredOutputError as e:
            raise ApiError(400, str(e), param=e.param, code="invalid_value") from e
        if len(found) > 1:
            raise ApiError(
                400,
                f"give one structured output constraint, not {' and '.join(p for _, p in found)}",
                param=found[1][1],
                code="invalid_value",
            )
        return found[0] if found else None

    def compile(self, build: Callable[[GrammarCompiler], Grammar]) -> Grammar:
        """``build(compiler)``; 400 naming the field when the grammar engine refuses it."""
        assert self.grammars is not None  # ready() came first
        try:
            return build(self.grammars)
        except StructuredOutputError as e:
            raise ApiError(400, str(e), param=e.param, code="invalid_value") from e
        except MissingExtraError as e:
            raise _unsupported("structured_outputs", str(e)) from e

    def structured_grammar(self, body: _SamplingFields) -> Optional[Grammar]:
        found = self.structured_spec(body)
        if found is None:
            return None
        spec, param = found
        return self.compile(lambda g: g.compile(spec, param))

    def tool_setup(
        self, body: ChatCompletionRequest
    ) -> tuple[list[Tool], Optional[_ToolPlan], Optional[Grammar]]:
        """(tools for the template, how to read the answer, the output's grammar) of a chat
        request: tools / tool_choice, or the legacy functions / function_call."""
        legacy = body.functions is not None
        if legacy and body.tools is not None:
            raise ApiError(400, "give tools or functions, not both", param="functions")
        given = body.functions if legacy else body.tools
        param, choice_param = ("functions", "function_call") if legacy else ("tools", "tool_choice")
        try:
            tools = [] if given is None else parse_tools(given, param, legacy=legacy)
            choice = parse_tool_choice(
                body.function_call if legacy else body.tool_choice, tools, choice_param
            )
        except ToolError as e:
            raise ApiError(400, str(e), param=e.param, code="invalid_value") from e
        grammar = self.structured_grammar(body)
        if choice.mode == "none":
            return tools, None, grammar
        if choice.mode != "auto" and grammar is not None:
            raise ApiError(
                400,
                f"{choice_param} {choice.mode} constrains the output to tool calls; it cannot "
                "be combined with another structured output",
                param=choice_param,
                code="invalid_value",
            )
        for i, tool in enumerate(tools):  # each schema's own fault, named
            where = f"{param}.{i}.parameters" if legacy else f"{param}.{i}.function.parameters"
            spec = StructuredOutputsParams(json=tool.parameters)
            self.compile(lambda g, spec=spec, where=where: g.compile(spec, where))
        if grammar is None:  # auto: a response_format wins over the lazy tool grammar
            parallel = body.parallel_tool_calls is not False and not legacy
            assert self.grammars is not None
            tags = self.grammars.special_tokens((OPEN, CLOSE))
            lark = tool_call_grammar(tools, choice, parallel, tags)
            grammar = self.compile(lambda g: g.compile_lark(lark, "tool-call grammar", param))
        return tools, _ToolPlan(tools, legacy), grammar

    def client_of(self, request: Request, body: _SamplingFields) -> str:
        if body.user:
            return f"user:{body.user}"
        return f"addr:{request.client.host if request.client else ''}"

    # -- running jobs ------------------------------------------------------------------------

    def submit(
        self, request: Request, body: _SamplingFields, items: list[tuple[list[int], Sampling]]
    ) -> list[tuple[Job, asyncio.Queue[tuple[str, Any]]]]:
        """Queues one generation per (prompt ids, sampling), all or none; returns (job, its
        event queue) for each."""
        if self.stopping:
            raise self.not_run()
        engine = self.ready()
        loop = asyncio.get_running_loop()
        client = self.client_of(request, body)
        jobs: list[tuple[Job, asyncio.Queue[tuple[str, Any]]]] = []
        for ids, sampling in items:
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

            def sink(kind: str, payload: Any, events: asyncio.Queue = events) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                    loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

            job = Job(ids, sampling, sink, client)
            if not engine.submit(job):
                for queued, _ in jobs:
                    queued.cancel()
                raise ApiError(
                    429,
                    f"The server is busy: {engine.queue.max_jobs} requests are already "
                    "waiting for the device. Retry later.",
                    type_="server_error",
                    code="queue_full",
                )
            jobs.append((job, events))
        return jobs

    @staticmethod
    def children(sampling: Sampling, n: int) -> list[Sampling]:
        """The ``n`` choices of a request: with a seed, choice i samples with seed + i, as vLLM
        seeds its child requests."""
        if sampling.seed is None:
            return [sampling] * n
        return [sampling.replace(seed=sampling.seed + i) for i in range(n)]

    async def result_of(
        self, request: Request, job: Job, events: asyncio.Queue[tuple[str, Any]]
    ) -> GenerationResult:
        """Waits for a job without streaming; cancels it if the client disconnects."""

        async def disconnected() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return

        watcher = asyncio.ensure_future(disconnected())
        try:
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    job.cancel()
                    raise ApiError(499, "client closed the request", code="client_closed")
                kind, payload = getter.result()
                if kind == "error":
                    raise ApiError(500, f"generation failed: {payload}", type_="server_error")
                if kind == "done":
                    if payload is None:
                        raise self.not_run()
                    return payload
        finally:
            watcher.cancel()
            job.cancel()  # no-op once done

    async def results_of(
        self, request: Request, jobs: list[tuple[Job, asyncio.Queue[tuple[str, Any]]]]
    ) -> list[GenerationResult]:
        """Every job's result in order; on any failure the others are cancelled too."""
        try:
            return [await self.result_of(request, job, events) for job, events in jobs]
        finally:
            for job, _ in jobs:
                job.cancel()  # no-op once done

    def not_run(self) -> ApiError:
        """Why a job was cancelled before it started (a client that went away reads nothing)."""
        if self.stopping:
            return ApiError(
                503,
                "The server is shutting down; retry the request.",
                type_="server_error",
                code="shutting_down",
            )
        return ApiError(499, "the request was cancelled", code="cancelled")

    # -- shutdown ----------------------------------------------------------------------------

    def begin_shutdown(self, cancel_after_s: float) -> None:
        """The server stopped accepting connections (SIGTERM): requests in flight may finish,
        but those still queued or running after ``cancel_after_s`` are cancelled, so every
        handler answers (a stream ends with finish_reason "abort", a queued request gets 503)
        before uvicorn's grace period runs out and it kills the handlers mid-response. Safe
        from a signal handler; the first call counts."""
        loop = self.loop
        if loop is None or self._shutdown_begun:
            return
        self._shutdown_begun = True
        loop.call_soon_threadsafe(loop.call_later, cancel_after_s, self.cancel_everything)

    def cancel_everything(self) -> None:
        self.stopping = True
        n = self.engine.cancel_all() if self.engine is not None else 0
        if n:
            log.warning("shutting down: cancelled %d request(s) still queued or running", n)

    # -- response parts ----------------------------------------------------------------------

    @staticmethod
    def usage(results: list[GenerationResult], n: int = 1) -> dict[str, Any]:
        """OpenAI's usage; the n choices of a prompt count its tokens once."""
        firsts = results[::n]
        prompt = sum(r.prompt_tokens for r in firsts)
        completion = sum(r.completion_tokens for r in results)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in firsts)},
        }

    @staticmethod
    def finish_reason(result: GenerationResult) -> str:
        return "abort" if result.finish_reason == "cancelled" else result.finish_reason

    def namer(self, body: _SamplingFields) -> Callable[[int], str]:
        """How log-probabilities name tokens: their text, or vLLM's ``token_id:<id>``."""
        if body.return_tokens_as_token_ids:
            return lambda token_id: f"token_id:{token_id}"
        return self.token_str

    def chat_logprobs(
        self, entries: list[TokenLogprob], top_n: int, name: Callable[[int], str]
    ) -> dict[str, Any]:
        """OpenAI's chat ``logprobs``: per token its text, log-probability and UTF-8 bytes,
        and the ``top_n`` most likely tokens at that position."""

        def item(token_id: int, logprob: float) -> dict[str, Any]:
            text = name(token_id)
            return {
                "token": text,
                "logprob": _clamp(logprob),
                "bytes": list(text.encode("utf-8", errors="replace")),
            }

        return {
            "content": [
                {
                    **item(e.token_id, e.logprob),
                    "top_logprobs": [item(t, lp) for t, lp in e.top[:top_n]],
                }
                for e in entries
            ]
        }

    def completion_logprobs(
        self,
        ids: list[int],
        entries: list[Optional[TokenLogprob]],
        top_n: int,
        offset: int,
        name: Callable[[int], str],
    ) -> tuple[dict[str, Any], int]:
        """OpenAI's completions ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``:
        the chosen token and the ``top_n`` most likely, ``text_offset``) for tokens whose text
        starts at ``offset``; also returns the offset after them. An echoed prompt's first
        token has no log-probability (None)."""
        tokens: list[str] = []
        token_logprobs: list[Optional[float]] = []
        tops: list[Optional[dict[str, float]]] = []
        offsets: list[int] = []
        for token_id, e in zip(ids, entries):
            text = name(token_id)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if e is None:
                token_logprobs.append(None)
                tops.append(None)
                continue
            token_logprobs.append(_clamp(e.logprob))
            top = {text: _clamp(e.logprob)}
            for t, lp in e.top[:top_n]:
                top.setdefault(name(t), _clamp(lp))
            tops.append(top)
        out = {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }
        return out, offset

    def vllm_prompt_logprobs(
        self, entries: list[Optional[TokenLogprob]], top_n: int
    ) -> list[Optional[dict[str, dict[str, Any]]]]:
        """vLLM's ``prompt_logprobs``: per prompt token None (the first) or ``{token id:
        {logprob, rank, decoded_token}}`` for the prompt's token and the ``top_n`` likeliest."""
        out: list[Optional[dict[str, dict[str, Any]]]] = []
        for e in entries:
            if e is None:
                out.append(None)
                continue
            step = {
                str(e.token_id): {
                    "logprob": _clamp(e.logprob),
                    "rank": e.rank,
                    "decoded_token": self.token_str(e.token_id),
                }
            }
            for rank, (t, lp) in enumerate(e.top[:top_n], 1):
                step.setdefault(
                    str(t),
                    {"logprob": _clamp(lp), "rank": rank, "decoded_token": self.token_str(t)},
                )
            out.append(step)
        return out

    # -- routes ------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        engine = self.engine
        if engine is None:
            status = "failed" if self.load_error is not None else "loading"
            return JSONResponse({"status": status, "model": self.name}, status_code=503)
        s = engine.stats
        cache = self.model.prefix_cache
        return JSONResponse(
            {
                "status": "ok",
                "model": self.name,
                "device": self.model.device_description,
                "queued": len(engine.queue),
                "running": engine.running is not None,
                "requests": {
                    "completed": s.completed,
                    "cancelled": s.cancelled,
                    "failed": s.failed,
                },
                "tokens": {
                    "prompt": s.prompt_tokens,
                    "cached": s.cached_tokens,
                    "generated": s.generated_tokens,
                },
                "prefix_cache": None
                if cache is None
                else {
                    "blocks": len(cache),
                    "bytes": cache.bytes_used,
                    "capacity_blocks": cache.capacity_blocks,
                    "block_size": cache.block_size,
                    "hit_rate": round(cache.stats.hit_rate, 4),
                },
            }
        )

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": __version__})

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "hyperdex",
            "max_model_len": int(self.model.max_length),
        }

    async def models(self, request: Request) -> Response:
        self.check_key(request)
        self.ready()
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model_info(self, request: Request) -> Response:
        self.check_key(request)
        self.ready()
        if request.path_params["model_id"] != self.name:
            raise ApiError(
                404,
                f"The model `{request.path_params['model_id']}` does not exist.",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(self.model_card())

    # -- /tokenize, /detokenize ----------------------------------------------------------------

    def prepare_tokenize(self, raw: bytes) -> dict[str, Any]:
        body: TokenizeRequest = self.parse(raw, TokenizeRequest)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give either prompt or messages", param="prompt")
        if body.prompt is not None:
            add = True if body.add_special_tokens is None else body.add_special_tokens
            encoded = self.tokenizer(
                body.prompt, add_special_tokens=add, return_attention_mask=False
            )
            ids = [int(t) for t in encoded.input_ids]
        else:
            try:
                tools = parse_tools(body.tools) if body.tools is not None else []
            except ToolError as e:
                raise ApiError(400, str(e), param=e.param, code="invalid_value") from e
            ids = self.chat_prompt(
                body.messages or [],
                body.add_generation_prompt,
                body.continue_final_message,
                body.chat_template_kwargs,
                add_special_tokens=bool(body.add_special_tokens),
                tools=tools,
            )
        return {
            "count": len(ids),
            "max_model_len": int(self.model.max_length),
            "tokens": ids,
            "token_strs": self.tokenizer.convert_ids_to_tokens(ids)
            if body.return_token_strs
            else None,
        }

    async def tokenize(self, request: Request) -> Response:
        return JSONResponse(await self.prepare(request, self.prepare_tokenize))

    def prepare_detokenize(self, raw: bytes) -> dict[str, Any]:
        body: DetokenizeRequest = self.parse(raw, DetokenizeRequest)
        ids = self.check_ids(list(body.tokens), "tokens", allow_empty=True)
        return {"prompt": self.tokenizer.decode(ids)}

    async def detokenize(self, request: Request) -> Response:
        return JSONResponse(await self.prepare(request, self.prepare_detokenize))

    # -- /v1/completions -----------------------------------------------------------------------

    def prepare_completion(
        self, raw: bytes
    ) -> tuple[CompletionRequest, Sampling, list[tuple[str, list[int]]]]:
        """(body, sampling, [(prompt text, prompt ids)]) of a completions request (prep pool)."""
        body: CompletionRequest = self.parse(raw, CompletionRequest)
        if body.stream and body.prompt_logprobs is not None:
            raise _unsupported("prompt_logprobs", "is not available when stream is true")
        for name in ("logprobs", "prompt_logprobs"):
            _check_top(name, getattr(body, name))
        prompt_n = body.prompt_logprobs
        if body.echo and body.logprobs is not None:  # the echoed prompt gets log-probs too
            prompt_n = max(prompt_n or 0, body.logprobs)
        sampling = self.sampling(body, body.max_tokens, body.logprobs, prompt_n)
        sampling = _with_grammar(sampling, self.structured_grammar(body))
        prompts: list[tuple[str, list[int]]] = []
        prompt = body.prompt
        items: list[Any] = [prompt] if isinstance(prompt, str) else list(prompt)
        if items and all(isinstance(t, int) for t in items):
            items = [items]
        if not items:
            raise ApiError(400, "prompt is empty", param="prompt")
        for item in items:
            if isinstance(item, str):
                ids = self.tokenizer(item, return_attention_mask=False).input_ids
                prompts.append((item, self.check_ids(list(ids), "prompt")))
            else:
                ids = self.check_ids([int(t) for t in item], "prompt")
                prompts.append((self.tokenizer.decode(ids), ids))
        for _, ids in prompts:
            self.check_budget(ids, sampling, "prompt")
        return body, sampling, prompts

    async def completions(self, request: Request) -> Response:
        body, sampling, prompts = await self.prepare(request, self.prepare_completion)
        n = body.n
        children = self.children(sampling, n)
        jobs = self.submit(request, body, [(ids, c) for _, ids in prompts for c in children])
        base = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.name,
        }
        top_n = body.logprobs
        name = self.namer(body)

        if not body.stream:
            results = await self.results_of(request, jobs)
            choices = []
            for k, r in enumerate(results):
                text, ids = prompts[k // n]
                choice: dict[str, Any] = {
                    "index": k,
                    "text": (text if body.echo else "") + r.text,
                    "logprobs": None,
                    "finish_reason": self.finish_reason(r),
                    "stop_reason": r.stop_reason,
                }
                if top_n is not None and r.logprobs is not None:
                    all_ids, entries = r.token_ids, list(r.logprobs)
                    if body.echo and r.prompt_logprobs is not None:
                        all_ids, entries = ids + all_ids, r.prompt_logprobs + entries
                    choice["logprobs"] = self.completion_logprobs(all_ids, entries, top_n, 0, name)[
                        0
                    ]
                if body.prompt_logprobs is not None and r.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = self.vllm_prompt_logprobs(
                        r.prompt_logprobs, body.prompt_logprobs
                    )
                choices.append(choice)
            return JSONResponse({**base, "choices": choices, "usage": self.usage(results, n)})

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(k: int, text: str, finish: Optional[str] = None, logprobs: Any = None) -> str:
            choice = {"index": k, "text": text, "logprobs": logprobs, "finish_reason": finish}
            data: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                data["usage"] = None
            return format_sse(json.dumps(data))

        async def stream() -> AsyncIterator[str]:
            results: list[GenerationResult] = []
            try:
                for k, (_job, events) in enumerate(jobs):
                    text, ids = prompts[k // n]
                    offset = 0  # text_offset of the next token of this choice
                    if body.echo and top_n is None:
                        yield chunk(k, text)
                    async for kind, payload in _drain(events):
                        if kind == "delta":
                            delta: Delta = payload
                            if delta.prompt_logprobs is not None:  # echo with logprobs
                                lp, offset = self.completion_logprobs(
                                    ids, delta.prompt_logprobs, top_n or 0, offset, name
                                )
                                yield chunk(k, text, logprobs=lp)
                                continue
                            lp = None
                            if top_n is not None and delta.logprobs is not None:
                                lp, offset = self.completion_logprobs(
                                    [e.token_id for e in delta.logprobs],
                                    list(delta.logprobs),
                                    top_n,
                                    offset,
                                    name,
                                )
                            yield chunk(k, delta.text, logprobs=lp)
                        elif kind == "error":
                            yield _error_event(payload)
                            return
                        elif payload is not None:
                            results.append(payload)
                            yield chunk(k, "", self.finish_reason(payload))
                        else:  # cancelled before it started: the server is stopping
                            yield _event(self.not_run())
                            return
                if include_usage:
                    usage = {**base, "choices": [], "usage": self.usage(results, n)}
                    yield format_sse(json.dumps(usage))
                yield format_sse("[DONE]")
            finally:
                for job, _ in jobs:
                    job.cancel()  # the client went away (or we are done: a no-op)

        return _sse(stream())

    # -- /v1/chat/completions ------------------------------------------------------------------

    def prepare_chat(
        self, raw: bytes
    ) -> tuple[ChatCompletionRequest, Sampling, list[int], Optional[_ToolPlan]]:
        """(body, sampling, prompt ids, how to read tool calls) of a chat request (on the prep
        pool)."""
        body: ChatCompletionRequest = self.parse(raw, ChatCompletionRequest)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(
                400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value"
            )
        for name in ("top_logprobs", "prompt_logprobs"):
            _check_top(name, getattr(body, name))
        if body.stream and body.prompt_logprobs is not None:
            raise _unsupported("prompt_logprobs", "is not available when stream is true")
        if not body.messages:
            raise ApiError(400, "messages must hold at least one message", param="messages")
        max_tokens = body.max_completion_tokens
        if max_tokens is None:
            max_tokens = body.max_tokens
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        sampling = self.sampling(body, max_tokens, logprobs, body.prompt_logprobs)
        tools, plan, grammar = self.tool_setup(body)
        sampling = _with_grammar(sampling, grammar)
        ids = self.chat_prompt(
            body.messages,
            body.add_generation_prompt,
            body.continue_final_message,
            body.chat_template_kwargs,
            tools=tools,
        )
        self.check_ids(ids, "messages")
        self.check_budget(ids, sampling, "messages")
        return body, sampling, ids, plan

    async def chat_completions(self, request: Request) -> Response:
        body, sampling, ids, plan = await self.prepare(request, self.prepare_chat)
        n = body.n
        jobs = self.submit(request, body, [(ids, c) for c in self.children(sampling, n)])
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
        }
        top_n = sampling.logprobs  # None: no logprobs
        name = self.namer(body)

        if not body.stream:
            results = await self.results_of(request, jobs)
            choices = []
            for k, r in enumerate(results):
                message: dict[str, Any] = {"role": "assistant", "content": r.text}
                finish = self.finish_reason(r)
                if plan is not None:
                    message["content"], calls = parse_tool_calls(r.text, plan.tools)
                    if calls:
                        message.update(plan.message_fields(calls))
                    finish = plan.finish_reason(finish, calls)
                choices.append(
                    {
                        "index": k,
                        "message": message,
                        "logprobs": None
                        if top_n is None or r.logprobs is None
                        else self.chat_logprobs(r.logprobs, top_n, name),
                        "finish_reason": finish,
                        "stop_reason": r.stop_reason,
                    }
                )
            answer = {**base, "choices": choices, "usage": self.usage(results, n)}
            if body.prompt_logprobs is not None and results[0].prompt_logprobs is not None:
                answer["prompt_logprobs"] = self.vllm_prompt_logprobs(
                    results[0].prompt_logprobs, body.prompt_logprobs
                )
            return JSONResponse(answer)

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        base["object"] = "chat.completion.chunk"

        def chunk(
            k: int, delta: dict[str, Any], finish: Optional[str] = None, logprobs: Any = None
        ) -> str:
            choice = {"index": k, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            data: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                data["usage"] = None
            return format_sse(json.dumps(data))

        async def stream() -> AsyncIterator[str]:
            results: list[GenerationResult] = []
            try:
                for k in range(len(jobs)):
                    yield chunk(k, {"role": "assistant", "content": ""})
                for k, (_job, events) in enumerate(jobs):
                    # with tools, text that may be a call waits (the calls come at the end)
                    calls = None if plan is None else ToolCallStream(plan.tools)
                    async for kind, payload in _drain(events):
                        if kind == "delta":
                            lp = None
                            if top_n is not None and payload.logprobs is not None:
                                lp = self.chat_logprobs(payload.logprobs, top_n, name)
                            text = payload.text if calls is None else calls.feed(payload.text)
                            if text or lp is not None or calls is None:
                                yield chunk(k, {"content": text}, logprobs=lp)
                        elif kind == "error":
                            yield _error_event(payload)
                            return
                        elif payload is not None:
                            results.append(payload)
                            finish = self.finish_reason(payload)
                            if plan is not None and calls is not None:
                                rest, found = calls.finish()
                                if rest:
                                    yield chunk(k, {"content": rest})
                                if found:
                                    yield chunk(k, plan.stream_fields(found))
                                finish = plan.finish_reason(finish, found)
                            yield chunk(k, {}, finish)
                        else:  # cancelled before it started: the server is stopping
                            yield _event(self.not_run())
                            return
                if include_usage:
                    usage = {**base, "choices": [], "usage": self.usage(results, n)}
                    yield format_sse(json.dumps(usage))
                yield format_sse("[DONE]")
            finally:
                for job, _ in jobs:
                    job.cancel()

        return _sse(stream())

    def chat_prompt(
        self,
        messages: list[ChatMessage],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: Optional[dict[str, Any]] = None,
        add_special_tokens: bool = False,
        tools: Optional[list[Tool]] = None,
    ) -> list[int]:
        """The token ids of a conversation through the tokenizer's chat template, with the
        ``tools`` (the template's way, or described in the system message)."""
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ApiError(
                400,
                "this model's tokenizer has no chat template; use /v1/completions",
                param="messages",
            )
        conversation = []
        for i, m in enumerate(messages):
            content = m.content
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise _unsupported(f"messages.{i}.content", "only text parts are supported")
                    parts.append(part["text"])
                content = "".join(parts)
            message: dict[str, Any] = {"role": m.role, "content": content or ""}
            if m.name:
                message["name"] = m.name
            if m.tool_calls:
                message["tool_calls"] = m.tool_calls
            if m.tool_call_id is not None:
                message["tool_call_id"] = m.tool_call_id
            conversation.append(message)
        try:
            conversation, template_tools = template_messages(
                conversation, tools or [], template_handles_tools(tok)
            )
        except ToolError as e:
            raise ApiError(400, str(e), param=e.param, code="invalid_value") from e
        options = dict(chat_template_kwargs or {})
        if template_tools:
            options["tools"] = template_tools
        if continue_final_message:  # only when asked: not every template knows it
            options["continue_final_message"] = True
        try:
            text = tok.apply_chat_template(
                conversation,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **options,
            )
        except Exception as e:  # the template rejected the conversation (roles, order)
            raise ApiError(400, f"the chat template failed: {e}", param="messages") from e
        ids = tok(text, add_special_tokens=add_special_tokens, return_attention_mask=False)
        return [int(t) for t in ids.input_ids]


async def _drain(events: asyncio.Queue[tuple[str, Any]]) -> AsyncIterator[tuple[str, Any]]:
    """A job's events up to and including its "done" or "error"."""
    while True:
        kind, payload = await events.get()
        yield kind, payload
        if kind != "delta":
            return


def _error_event(e: Exception) -> str:
    return _event(ApiError(500, f"generation failed: {e}", type_="server_error"))


def _event(err: ApiError) -> str:
    return format_sse(json.dumps(err.body())) + format_sse("[DONE]")


def _sse(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def create_app(
    model: Any,
    tokenizer: Any,
    served_model_name: str,
    api_key: Optional[str] = None,
    max_queue: int = 256,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    loader: Optional[Callable[[], tuple[Any, Any]]] = None,
    on_load_failed: Optional[Callable[[BaseException], None]] = None,
) -> Starlette:
    """The ASGI application serving ``model`` (run it with uvicorn). With ``model`` None,
    ``loader()`` (returning ``(model, tokenizer)``) runs on a thread once the server starts,
    which answers meanwhile (``/health``: 503); ``on_load_failed(exception)`` hears if it
    fails."""
    if model is None and loader is None:
        raise ValueError("create_app needs a model or a loader")
    server = OpenAIServer(
        model, tokenizer, served_model_name, api_key, max_queue, max_request_bytes
    )

    def handle(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except ApiError as e:
                return e.response()

        return endpoint

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.loop = asyncio.get_running_loop()
        server.start(loader, on_load_failed)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, server.close)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "")
        if status == 404:
            message = f"Unknown path {request.url.path}"
        elif status == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(detail)
        return ApiError(int(status), message, code=None).response()

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return ApiError(500, f"internal error: {exc}", type_="server_error").response()

    app = Starlette(
        routes=[
            Route("/health", handle(server.health), methods=["GET"]),
            Route("/metrics", handle(server.metrics_text), methods=["GET"]),
            Route("/version", handle(server.version), methods=["GET"]),
            Route("/tokenize", handle(server.tokenize), methods=["POST"]),
            Route("/detokenize", handle(server.detokenize), methods=["POST"]),
            Route("/v1/models", handle(server.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", handle(server.model_info), methods=["GET"]),
            Route("/v1/completions", handle(server.completions), methods=["POST"]),
            Route("/v1/chat/completions", handle(server.chat_completions), methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app
