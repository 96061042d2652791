"""An OpenAI-compatible HTTP server (Starlette on uvicorn) for one compiled model.

Endpoints: ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/completions``, ``POST /v1/chat/completions``. Requests carry OpenAI's fields plus
vLLM's extra sampling ones (``top_k``, ``repetition_penalty``, ``min_tokens``, ``ignore_eos``,
``stop_token_ids``, ...). ``stream: true`` answers with Server-Sent Events: for chat a first
chunk with the role, content deltas, a chunk with ``finish_reason``, a usage chunk when
``stream_options.include_usage``, then ``data: [DONE]``. Errors have OpenAI's body
(``{"error": {"message", "type", "param", "code"}}``) and status codes.

The device runs one sequence at a time: requests wait in a :class:`~.engine.FairQueue`
(round-robin over clients: the request's ``user``, else its address) for the engine's worker
thread. A client that disconnects cancels its request, queued or running, so the device moves
on to the next one.

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
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..transformers.streamers import format_sse
from .engine import Engine, GenerationResult, Job, PromptTooLong, Sampling, token_budget

log = logging.getLogger("hyperdex.serve")

DEFAULT_MAX_REQUEST_BYTES = 4 << 20
PREP_THREADS = 2  # parse + tokenize; bounds the memory that huge prompts take at once
DRAIN_BYTES, DRAIN_S = 16 << 20, 5.0  # read and dropped past the limit before the 413
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone one: valid pairs decode to one char
T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    repetition_penalty: Optional[float] = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: Optional[list[int]] = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = 16  # OpenAI's default for completions
    echo: bool = False
    logprobs: Optional[int] = None
    best_of: Optional[int] = None
    suffix: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Any] = None
    parallel_tool_calls: Optional[bool] = None
    add_generation_prompt: bool = True
    chat_template_kwargs: Optional[dict[str, Any]] = None


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
    if err.get("type") == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param)
    if err.get("type") == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param)
    return ApiError(400, f"Invalid value for '{param}': {err.get('msg')}", param=param)


# --------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------


class OpenAIServer:
    """The state behind the routes: the model, its tokenizer, the engine, the API key."""

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
        self.model = model
        self.tokenizer = tokenizer
        self.name = served_model_name
        self.api_key = api_key or None
        self.max_request_bytes = int(max_request_bytes)
        self.engine = Engine(model, tokenizer, max_queue=max_queue)
        self.prep = ThreadPoolExecutor(PREP_THREADS, thread_name_prefix="hyperdex-prep")
        self.loop: Optional[asyncio.AbstractEventLoop] = None  # set by the lifespan
        self.stopping = False  # jobs were cancelled for shutdown: new ones are refused
        self._shutdown_begun = False
        # the first call settles a fast tokenizer's padding/truncation state (a mutation);
        # made here, the prep threads only ever read it ("Already borrowed" otherwise)
        tokenizer("warm-up")
        self.created = int(time.time())

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
        """Checks the key, reads the body, then ``build(body)`` on the prep pool: JSON parsing,
        validation and tokenization take long for big prompts and must not stall the loop."""
        self.check_key(request)
        try:
            raw = await self.read_body(request)
        except ClientDisconnect:  # gone while sending: nobody reads the answer, nothing failed
            raise ApiError(499, "client closed the request", code="client_closed") from None
        return await asyncio.get_running_loop().run_in_executor(self.prep, build, raw)

    def parse(self, raw: bytes, cls: type[_SamplingFields]) -> Any:
        data = _load_json(raw)
        try:
            body = cls.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e) from e
        if body.model != self.name:
            raise ApiError(
                404,
                f"The model `{body.model}` does not exist. This server serves `{self.name}`.",
                param="model",
                code="model_not_found",
            )
        return body

    def sampling(self, body: _SamplingFields, max_tokens: Optional[int]) -> Sampling:
        if body.n != 1:
            raise _unsupported(
                "n", "only n=1 is supported (the LPU runs one sequence at a time); send n requests"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name) not in (None, 0, 0.0):
                raise _unsupported(name, "is not supported; use repetition_penalty")
        if body.logit_bias:
            raise _unsupported("logit_bias", "is not supported")
        try:
            return Sampling(
                max_tokens=max_tokens,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                top_k=0 if body.top_k is None else body.top_k,
                repetition_penalty=(
                    1.0 if body.repetition_penalty is None else body.repetition_penalty
                ),
                seed=body.seed,
                stop=body.stop or [],
                stop_token_ids=body.stop_token_ids or [],
                ignore_eos=body.ignore_eos,
                min_tokens=body.min_tokens,
                skip_special_tokens=body.skip_special_tokens,
                include_stop_str_in_output=body.include_stop_str_in_output,
            )
        except ValueError as e:
            param = e.args[1] if len(e.args) > 1 else None
            raise ApiError(400, str(e.args[0]), param=param, code="invalid_value") from e

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        vocab = int(self.model.vocab_size)
        if not ids:
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

    def client_of(self, request: Request, body: _SamplingFields) -> str:
        if body.user:
            return f"user:{body.user}"
        return f"addr:{request.client.host if request.client else ''}"

    # -- running jobs ------------------------------------------------------------------------

    def submit(self, request: Request, body: Any, prompt_ids: list[int], sampling: Sampling):
        """Queues one generation; returns (job, its event queue)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def sink(kind: str, payload: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        if self.stopping:
            raise self.not_run()
        job = Job(prompt_ids, sampling, sink, self.client_of(request, body))
        if not self.engine.submit(job):
            raise ApiError(
                429,
                f"The server is busy: {self.engine.queue.max_jobs} requests are already "
                "waiting for the device. Retry later.",
                type_="server_error",
                code="queue_full",
            )
        return job, events

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
        n = self.engine.cancel_all()
        if n:
            log.warning("shutting down: cancelled %d request(s) still queued or running", n)

    @staticmethod
    def usage(results: list[GenerationResult]) -> dict[str, Any]:
        prompt = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in results)},
        }

    @staticmethod
    def finish_reason(result: GenerationResult) -> str:
        return "abort" if result.finish_reason == "cancelled" else result.finish_reason

    # -- routes ------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        s = self.engine.stats
        cache = self.model.prefix_cache
        return JSONResponse(
            {
                "status": "ok",
                "model": self.name,
                "device": self.model.device_description,
                "queued": len(self.engine.queue),
                "running": self.engine.running is not None,
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
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def model_info(self, request: Request) -> Response:
        self.check_key(request)
        if request.path_params["model_id"] != self.name:
            raise ApiError(
                404,
                f"The model `{request.path_params['model_id']}` does not exist.",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(self.model_card())

    def prepare_completion(
        self, raw: bytes
    ) -> tuple[CompletionRequest, Sampling, list[tuple[str, list[int]]]]:
        """(body, sampling, [(prompt text, prompt ids)]) of a completions request (prep pool)."""
        body: CompletionRequest = self.parse(raw, CompletionRequest)
        if body.logprobs:
            raise _unsupported("logprobs", "is not supported")
        if body.best_of not in (None, 1):
            raise _unsupported("best_of", "only best_of=1 is supported")
        if body.suffix:
            raise _unsupported("suffix", "is not supported")
        sampling = self.sampling(body, body.max_tokens)
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
        rid = f"cmpl-{uuid.uuid4().hex}"
        jobs = [self.submit(request, body, ids, sampling) for _, ids in prompts]
        base = {"id": rid, "object": "text_completion", "created": int(time.time())}
        base["model"] = self.name

        if not body.stream:
            results = []
            for job, events in jobs:
                results.append(await self.result_of(request, job, events))
            choices = [
                {
                    "index": i,
                    "text": (prompts[i][0] if body.echo else "") + r.text,
                    "logprobs": None,
                    "finish_reason": self.finish_reason(r),
                    "stop_reason": r.stop_reason,
                }
                for i, r in enumerate(results)
            ]
            return JSONResponse({**base, "choices": choices, "usage": self.usage(results)})

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(i: int, text: str, finish: Optional[str] = None) -> str:
            data = {
                **base,
                "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                data["usage"] = None
            return format_sse(json.dumps(data))

        async def stream() -> AsyncIterator[str]:
            results = []
            try:
                for i, (_job, events) in enumerate(jobs):
                    if body.echo:
                        yield chunk(i, prompts[i][0])
                    async for kind, payload in _drain(events):
                        if kind == "delta":
                            yield chunk(i, payload)
                        elif kind == "error":
                            yield _error_event(payload)
                            return
                        elif payload is not None:
                            results.append(payload)
                            yield chunk(i, "", self.finish_reason(payload))
                        else:  # cancelled before it started: the server is stopping
                            yield _event(self.not_run())
                            return
                if include_usage:
                    yield format_sse(
                        json.dumps({**base, "choices": [], "usage": self.usage(results)})
                    )
                yield format_sse("[DONE]")
            finally:
                for job, _ in jobs:
                    job.cancel()  # the client went away (or we are done: a no-op)

        return _sse(stream())

    def prepare_chat(self, raw: bytes) -> tuple[ChatCompletionRequest, Sampling, list[int]]:
        """(body, sampling, prompt ids) of a chat request (on the prep pool)."""
        body: ChatCompletionRequest = self.parse(raw, ChatCompletionRequest)
        if body.logprobs:
            raise _unsupported("logprobs", "is not supported")
        if body.tools:
            raise _unsupported("tools", "tool calling is not supported")
        if body.response_format and body.response_format.get("type") not in (None, "text"):
            raise _unsupported("response_format", "only {'type': 'text'} is supported")
        if not body.messages:
            raise ApiError(400, "messages must hold at least one message", param="messages")
        max_tokens = body.max_completion_tokens
        if max_tokens is None:
            max_tokens = body.max_tokens
        sampling = self.sampling(body, max_tokens)
        ids = self.chat_prompt(body)
        self.check_budget(ids, sampling, "messages")
        return body, sampling, ids

    async def chat_completions(self, request: Request) -> Response:
        body, sampling, ids = await self.prepare(request, self.prepare_chat)
        job, events = self.submit(request, body, ids, sampling)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
        }
        if not body.stream:
            r = await self.result_of(request, job, events)
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": None,
                "finish_reason": self.finish_reason(r),
                "stop_reason": r.stop_reason,
            }
            return JSONResponse({**base, "choices": [choice], "usage": self.usage([r])})

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        base["object"] = "chat.completion.chunk"

        def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> str:
            data = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                data["usage"] = None
            return format_sse(json.dumps(data))

        async def stream() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for kind, payload in _drain(events):
                    if kind == "delta":
                        yield chunk({"content": payload})
                    elif kind == "error":
                        yield _error_event(payload)
                        return
                    elif payload is not None:
                        yield chunk({}, self.finish_reason(payload))
                        if include_usage:
                            usage = {**base, "choices": [], "usage": self.usage([payload])}
                            yield format_sse(json.dumps(usage))
                    else:  # cancelled before it started: the server is stopping
                        yield _event(self.not_run())
                        return
                yield format_sse("[DONE]")
            finally:
                job.cancel()

        return _sse(stream())

    def chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ApiError(
                400,
                "this model's tokenizer has no chat template; use /v1/completions",
                param="messages",
            )
        messages = []
        for i, m in enumerate(body.messages):
            content = m.content
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise _unsupported(f"messages.{i}.content", "only text parts are supported")
                    parts.append(part["text"])
                content = "".join(parts)
            message = {"role": m.role, "content": content or ""}
            if m.name:
                message["name"] = m.name
            messages.append(message)
        try:
            text = tok.apply_chat_template(
                messages,
                add_generation_prompt=body.add_generation_prompt,
                tokenize=False,
                **(body.chat_template_kwargs or {}),
            )
        except Exception as e:  # the template rejected the conversation (roles, order)
            raise ApiError(400, f"the chat template failed: {e}", param="messages") from e
        ids = tok(text, add_special_tokens=False, return_attention_mask=False).input_ids
        return self.check_ids(list(ids), "messages")


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
) -> Starlette:
    """The ASGI application serving ``model`` (run it with uvicorn)."""
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
        server.engine.start()
        try:
            yield
        finally:
            server.prep.shutdown(wait=False, cancel_futures=True)
            await asyncio.get_running_loop().run_in_executor(None, server.engine.shutdown)

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
