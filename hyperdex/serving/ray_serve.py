"""hdex-serve on Ray Serve: one OpenAI-compatible endpoint in front of N replicas, each a
hdex-serve of its own with its own LPU boards (``hdex-serve MODEL --ray [ADDRESS] --replicas N``,
or ``serve run hyperdex.serving.ray_serve:app_builder model=FOLDER replicas=N``;
docs/scale-out.md). Needs the ``ray`` extra.

The application has two deployments:

* ``HdexReplica`` (N replicas, each asking Ray for ``{"lpu": k}``, so Ray places it only on a
  node with k boards free): loads the compiled model and builds hdex-serve's own Starlette app
  around it (:func:`.openai_server.create_app`). :meth:`HdexReplica.handle_request` runs one
  forwarded HTTP request through that app and streams back the response's start and body, so
  the API, its checks, its errors and its SSE are hdex-serve's, byte for byte.
* ``HdexIngress`` (one replica, no board): the HTTP entry point behind Ray Serve's proxy. It
  reads the body, takes the prompt's text and forwards the request through a deployment handle
  whose router, :class:`PrefixAffinityRouter`, prefers the replica that last served the same
  prompt prefix (whose prefix cache holds its KV blocks).

Why not Ray Serve's ASGI ingress on the replicas themselves: Ray's proxy picks a replica before
it reads the body, so no router there can see the prompt; a handle call from an ingress can.
Why not ``ray.serve.llm``'s ``PrefixCacheAffinityRouter``: it needs the ``ray[llm]`` extra
(pyarrow and more), asks a shared actor on every request, and lets the least-loaded replica
lose to the matching one however long the latter's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import signal
import socket
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import ray
from ray import serve
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica
from starlette.requests import Request
from starlette.responses import Response

from ..errors import ConfigError, FormatError, HyperdexError
from ..ray_cluster import LPU, RayClusterError, connect, detect_lpus
from ..transformers.streamers import format_sse

log = logging.getLogger("hyperdex.serve")

APP_NAME = "hdex"
REPLICA_HEADER = "x-hdex-replica"  # which replica answered (its Ray Serve id)
DEVICES_HEADER = "x-hdex-lpu"  # the board indices it holds on its node
GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
MAX_ONGOING = (
    4  # requests a replica holds at once: the rest wait in the router, free to go anywhere
)
START_TIMEOUT_S = 900.0  # loading a large model on every replica takes minutes
PARSE_ON_THREAD_BYTES = 1 << 16  # larger bodies are parsed off the ingress's event loop
LOCK_DIR_ENV = "HYPERDEX_LPU_LOCK_DIR"


# --------------------------------------------------------------------------------------------
# What travels from the ingress to a replica
# --------------------------------------------------------------------------------------------


@dataclass
class ForwardedRequest:
    """One HTTP request as the ingress received it, for a replica's app to answer.
    ``prompt_text`` is what the router matches prefixes on ("" for no preference)."""

    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: Optional[tuple[str, int]]
    scheme: str = "http"
    prompt_text: str = ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI's content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def routing_text(path: str, body: bytes) -> str:
    """The prompt of a completion or chat request as one string, for prefix matching: the
    prompt, or each message's role and text in order (what the chat template lays out in the
    same order). "" for other routes and for bodies the replica will refuse anyway."""
    if path not in GENERATION_PATHS:
        return ""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(data, dict):
        return ""
    messages = data.get("messages")
    if isinstance(messages, list):
        return "".join(
            f"\x1e{m.get('role', '')}\x1f{_text_of(m.get('content'))}"
            for m in messages
            if isinstance(m, dict)
        )
    prompt = data.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]  # several prompts: the first decides
    if isinstance(prompt, list):  # token ids
        return " ".join(str(t) for t in prompt)
    return prompt if isinstance(prompt, str) else ""


# --------------------------------------------------------------------------------------------
# Prefix-aware routing
# --------------------------------------------------------------------------------------------


def prefix_blocks(text: str, block_chars: int) -> list[bytes]:
    """Chained hashes of the text's full blocks of ``block_chars`` characters: block i's key
    covers every character before its end, as the replica's prefix cache keys KV blocks."""
    keys, parent = [], b""
    for end in range(block_chars, len(text) + 1, block_chars):
        parent = hashlib.blake2b(
            parent + text[end - block_chars : end].encode("utf-8", "surrogatepass"),
            digest_size=16,
        ).digest()
        keys.append(parent)
    return keys


class PrefixAffinityRouter(RequestRouter):
    """Ray Serve request router: a request goes to the replica that served the longest common
    prompt prefix (at least ``min_match_blocks`` blocks of ``block_chars`` characters, about
    one 32-token KV block), unless that replica has ``max_imbalance`` more requests in flight
    than the least loaded one; otherwise, and for requests without a prompt, to the least
    loaded replica (ties broken at random).

    The router remembers, per replica, the block keys of the prompts it sent there (LRU, at most
    ``max_blocks`` keys each), and forgets a replica that dies. Each handle has its own router:
    with one ingress replica (the default) that is one view of the whole cluster.

    No FIFO mixin on purpose: Ray's FIFO mixin hands a chosen replica to the oldest waiting
    request, whatever prompt it has; without it the replica goes to the request it was chosen
    for.
    """

    def initialize_state(
        self,
        block_chars: int = 64,
        min_match_blocks: int = 2,
        max_imbalance: int = 2,
        max_blocks: int = 100_000,
    ) -> None:
        self.block_chars = int(block_chars)
        self.min_match_blocks = int(min_match_blocks)
        self.max_imbalance = int(max_imbalance)
        self.max_blocks = int(max_blocks)
        self.blocks: dict[ReplicaID, OrderedDict[bytes, None]] = {}
        self.routed_by_prefix = 0  # requests sent where their prefix was

    def _keys(self, pending: Optional[PendingRequest]) -> list[bytes]:
        if pending is None or not pending.args:
            return []
        forwarded = pending.args[0]
        text = getattr(forwarded, "prompt_text", "")
        return prefix_blocks(text, self.block_chars) if text else []

    def _matched(self, replica_id: ReplicaID, keys: list[bytes]) -> int:
        held = self.blocks.get(replica_id)
        if not held:
            return 0
        n = 0
        for key in keys:  # chained keys: the first miss ends the common prefix
            if key not in held:
                break
            n += 1
        return n

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> list[list[RunningReplica]]:
        candidates = random.sample(candidate_replicas, len(candidate_replicas))
        keys = self._keys(pending_request)
        if not keys or not candidates:
            return [candidates]
        matched = {r.replica_id: self._matched(r.replica_id, keys) for r in candidates}
        best = max(matched.values())
        if best < self.min_match_blocks:
            return [candidates]
        queue = self.replica_queue_len_cache
        known = [q for r in candidates if (q := queue.get(r.replica_id)) is not None]
        limit = (min(known) if known else 0) + self.max_imbalance
        first = [
            r
            for r in candidates
            if matched[r.replica_id] == best
            and (queue.get(r.replica_id) is None or queue.get(r.replica_id) <= limit)
        ]
        if not first:
            return [candidates]
        rest = [r for r in candidates if r not in first]
        return [first, rest] if rest else [first]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ):
        keys = self._keys(pending_request)
        if not keys:
            return
        if self._matched(replica_id, keys) >= self.min_match_blocks:
            self.routed_by_prefix += 1
        held = self.blocks.setdefault(replica_id, OrderedDict())
        for key in keys:
            held[key] = None
            held.move_to_end(key)
        while len(held) > self.max_blocks:
            held.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID):
        super().on_replica_actor_died(replica_id)
        self.blocks.pop(replica_id, None)

    def update_replicas(self, replicas: list[RunningReplica]):
        super().update_replicas(replicas)
        alive = {r.replica_id for r in replicas}
        for rid in [rid for rid in self.blocks if rid not in alive]:
            del self.blocks[rid]


# --------------------------------------------------------------------------------------------
# Boards: which of a node's LPUs a replica owns
# --------------------------------------------------------------------------------------------


class DeviceClaim:
    """The board indices a replica holds on its node: one lock file per board (``flock``,
    released by the OS when the process ends, however it ends). Ray counts the boards, this
    says which ones: two replicas on one node never open the same board."""

    def __init__(self, count: int, total: int, lock_dir: Optional[Path] = None) -> None:
        folder = lock_dir or Path(
            os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "hyperdex-lpu-locks"
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.indices: list[int] = []
        self._files: list[int] = []
        for index in range(total):
            if len(self.indices) == count:
                break
            fd = os.open(folder / f"lpu{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another replica holds it
                os.close(fd)
                continue
            self.indices.append(index)
            self._files.append(fd)
        if len(self.indices) < count:
            self.release()
            raise HyperdexError(
                f"only {len(self.indices)} of this node's {total} LPU(s) are free, a replica "
                f"needs {count} (the others are held by other processes: lock files in {folder})"
            )

    def release(self) -> None:
        for fd in self._files:
            os.close(fd)  # closing the descriptor drops the lock
        self._files = []


def _node_lpus() -> int:
    """The ``lpu`` resource of the node this process runs on."""
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return int(node.get("Resources", {}).get(LPU, 0))
    return 0


# --------------------------------------------------------------------------------------------
# The deployments
# --------------------------------------------------------------------------------------------


class HdexReplica:
    """One hdex-serve: its model on its own boards, its own engine and queue."""

    async def __init__(
        self,
        model: str,
        served_model_name: str,
        num_lpu: int,
        prefix: Optional[str] = None,
        api_key: Optional[str] = None,
        max_queue: int = 256,
        max_request_bytes: int = 4 << 20,
        num_gpu: int = 0,
        load_kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        from . import load_for_serving
        from .openai_server import create_app

        self.replica_id = serve.get_replica_context().replica_id.unique_id
        where = f"replica {self.replica_id} on node {ray.util.get_node_ip_address()}"
        try:
            self.claim = DeviceClaim(num_lpu, max(_node_lpus(), num_lpu))
        except HyperdexError as e:
            raise HyperdexError(f"{where}: {e}") from None
        # the XRT backend opens HYPERDEX_XRT_DEVICE (this process's own environment); the
        # emulator needs no index
        os.environ["HYPERDEX_XRT_DEVICE"] = str(self.claim.indices[0])
        device_map: dict[str, int] = {LPU: num_lpu}
        if num_gpu:
            device_map["gpu"] = num_gpu
        try:
            lpu_model, tokenizer = await asyncio.to_thread(
                load_for_serving,
                model,
                prefix=prefix,
                device_map=device_map,
                compile_if_needed=False,
                **(load_kwargs or {}),
            )
        except (FormatError, ConfigError) as e:  # not compiled here: each node needs the folder
            self.claim.release()
            raise HyperdexError(
                f"{where}: {e} (with --ray every node that runs a replica needs the compiled "
                "folder at the same path)"
            ) from None
        except BaseException:
            self.claim.release()
            raise
        self.headers = [
            (REPLICA_HEADER.encode(), self.replica_id.encode()),
            (DEVICES_HEADER.encode(), ",".join(map(str, self.claim.indices)).encode()),
        ]
        self.app = create_app(
            lpu_model,
            tokenizer,
            served_model_name,
            api_key=api_key,
            max_queue=max_queue,
            max_request_bytes=max_request_bytes,
        )
        # the app's lifespan starts its engine on this (the replica's) event loop
        self.lifespan = self.app.router.lifespan_context(self.app)
        await self.lifespan.__aenter__()
        log.info("%s serves %s on %s", where, served_model_name, lpu_model.device_description)

    async def handle_request(self, request: ForwardedRequest) -> AsyncIterator[Any]:
        """Runs ``request`` through hdex-serve's app: yields ``(status, headers)`` first, then
        the body's chunks as the app sends them. Closing the generator (the client went away)
        is a disconnect for the app, which cancels the generation."""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.path.encode(),
            "root_path": "",
            "query_string": request.query_string,
            "headers": request.headers,
            "client": request.client,
            "server": None,
            "state": {},
        }
        messages: asyncio.Queue[Optional[dict[str, Any]]] = asyncio.Queue()
        gone = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                await messages.put(None)

        task = asyncio.ensure_future(run())
        try:
            while (message := await messages.get()) is not None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", [])) + self.headers
                    yield int(message["status"]), headers
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield bytes(message["body"])
                    if not message.get("more_body", False):
                        break
        finally:
            gone.set()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            if not task.done():
                task.cancel()

    async def check_health(self) -> None:
        """Ray Serve asks every few seconds; a replica whose engine is gone is replaced."""
        if self.app.state.server.engine is None:
            raise RuntimeError(f"replica {self.replica_id}: the engine is not running")

    def __del__(self) -> None:
        app = getattr(self, "app", None)
        if app is not None:
            app.state.server.close()
        claim = getattr(self, "claim", None)
        if claim is not None:
            claim.release()


def _api_error(status: int, message: str, code: str) -> dict[str, Any]:
    """OpenAI's error body, as hdex-serve's ApiError writes it."""
    error_type = "server_error" if status >= 500 or status == 429 else "invalid_request_error"
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _failure(e: BaseException) -> tuple[int, str, str]:
    """(status, message, code) for a request that a replica could not answer."""
    if isinstance(e, BackPressureError):
        return 429, "every replica's queue is full; retry later", "queue_full"
    if isinstance(e, RayActorError):
        return (
            503,
            "the replica serving this request stopped before finishing it "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no reason given'}); "
            "Ray Serve starts a new one: retry the request",
            "replica_unavailable",
        )
    if isinstance(e, RayTaskError):
        return 500, f"the replica failed: {e.cause if e.cause else e}", "server_error"
    return 503, f"no replica could take the request ({type(e).__name__}: {e})", "unavailable"


class _Relay(Response):
    """A replica's answer as it comes. Unlike Starlette's StreamingResponse it does not listen
    for the client's disconnect itself: Ray Serve cancels the request then, which closes the
    body iterator and so the replica's stream."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: Any) -> None:
        self.status_code = status
        self.raw_headers = headers
        self.body_iterator = body
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:  # also when cancelled: the replica stops generating at once
            await self.body_iterator.aclose()


class HdexIngress:
    """HTTP in, a replica's answer out (see the module's docstring)."""

    def __init__(self, replicas: Any, max_request_bytes: int = 4 << 20) -> None:
        self.replicas = replicas.options(stream=True)
        self.max_request_bytes = int(max_request_bytes)

    async def _body(self, request: Request) -> bytes:
        """At most max_request_bytes + 1 bytes: past the limit the replica's app answers 413
        from what it gets (with the client's Content-Length, before reading any)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_request_bytes:
                break
        return b"".join(chunks)[: self.max_request_bytes + 1]

    async def __call__(self, request: Request) -> Response:
        try:
            body = await self._body(request)
        except Exception:  # the client went away while sending
            return Response(status_code=499)
        path = request.url.path
        if len(body) > PARSE_ON_THREAD_BYTES:
            text = await asyncio.to_thread(routing_text, path, body)
        else:
            text = routing_text(path, body)
        client = request.client
        forwarded = ForwardedRequest(
            method=request.method,
            path=path,
            query_string=request.url.query.encode("latin-1"),
            headers=list(request.headers.raw),
            body=body,
            client=(client.host, client.port) if client else None,
            scheme=request.url.scheme,
            prompt_text=text,
        )
        stream = self.replicas.handle_request.remote(forwarded)
        try:
            status, headers = await stream.__anext__()
        except BaseException as e:
            stream.cancel()
            if isinstance(e, asyncio.CancelledError):
                raise
            code, message, name = _failure(e)
            log.warning("request to %s failed before its answer began: %s", path, message)
            return Response(
                json.dumps(_api_error(code, message, name)),
                status_code=code,
                media_type="application/json",
            )
        sse = any(k.lower() == b"content-type" and b"event-stream" in v for k, v in headers)

        async def rest() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    yield chunk
            except (RayError, BackPressureError) as e:
                code, message, name = _failure(e)
                log.warning("request to %s failed while answering: %s", path, message)
                if not sse:
                    raise  # a JSON body cut short: nothing valid can follow
                # an SSE stream tells the client as hdex-serve does: an error event, [DONE]
                error = _api_error(code, message, name)
                yield (format_sse(json.dumps(error)) + format_sse("[DONE]")).encode()
            finally:
                stream.cancel()  # the client left, or the stream ended: free the replica

        return _Relay(status, headers, rest())


# --------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------


def compiled_devices(model: str, prefix: Optional[str] = None) -> int:
    """The device count the folder was compiled for (FormatError when it is not compiled)."""
    from ..compiled.folder import COMPILE_INFO_NAME, read_json, resolve_compiled

    folder = resolve_compiled(model, prefix)
    return int(read_json(folder / COMPILE_INFO_NAME, "compile info")["num_device"])


def build_app(
    model: str,
    replicas: int = 1,
    num_lpu: int = 1,
    served_model_name: Optional[str] = None,
    prefix: Optional[str] = None,
    api_key: Optional[str] = None,
    max_queue: int = 256,
    max_request_bytes: int = 4 << 20,
    num_gpu: int = 0,
    num_cpus: float = 1.0,
    max_ongoing_requests: int = MAX_ONGOING,
    load_kwargs: Optional[dict[str, Any]] = None,
    router_kwargs: Optional[dict[str, Any]] = None,
    health_check_period_s: Optional[float] = None,
) -> Any:
    """The Ray Serve application: ``replicas`` x HdexReplica, each holding ``{"lpu":
    num_lpu}`` (and ``num_gpu`` GPUs for hybrid prefill), behind one HdexIngress. ``model`` is
    a compiled folder (or a model id with ``prefix``) at the same path on every node."""
    if replicas < 1 or num_lpu < 1:
        raise ValueError(f"replicas and num_lpu must be >= 1, got {replicas} and {num_lpu}")
    name = served_model_name or str(model)
    actor: dict[str, Any] = {"num_cpus": num_cpus, "resources": {LPU: num_lpu}}
    if num_gpu:
        actor["num_gpus"] = num_gpu
    options: dict[str, Any] = {}
    if health_check_period_s is not None:
        options["health_check_period_s"] = health_check_period_s
    replica = serve.deployment(HdexReplica, name="HdexReplica").options(
        num_replicas=replicas,
        ray_actor_options=actor,
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queue,
        request_router_config=RequestRouterConfig(
            request_router_class=PrefixAffinityRouter,
            request_router_kwargs=dict(router_kwargs or {}),
        ),
        **options,
    )
    ingress = serve.deployment(HdexIngress, name="HdexIngress").options(
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=max(max_queue, 1) + replicas * max_ongoing_requests,
    )
    return ingress.bind(
        replica.bind(
            str(model),
            name,
            num_lpu,
            prefix=prefix,
            api_key=api_key,
            max_queue=max_queue,
            max_request_bytes=max_request_bytes,
            num_gpu=num_gpu,
            load_kwargs=load_kwargs,
        ),
        max_request_bytes=max_request_bytes,
    )


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run hyperdex.serving.ray_serve:app_builder model=FOLDER replicas=2
    [num_lpu=1 served_model_name=NAME prefix=DIR api_key=KEY max_queue=256]``."""
    known = {"model", "replicas", "num_lpu", "served_model_name", "prefix", "api_key", "max_queue"}
    unknown = sorted(set(args) - known)
    if unknown or "model" not in args:
        raise ValueError(f"give model=FOLDER; known arguments: {sorted(known)}; got {unknown}")
    ints = {k: int(args[k]) for k in ("replicas", "num_lpu", "max_queue") if k in args}
    if "num_lpu" not in ints:
        try:
            ints["num_lpu"] = compiled_devices(args["model"], args.get("prefix"))
        except HyperdexError:
            ints["num_lpu"] = 1  # not compiled here: the replicas say so on their nodes
    strs = {k: args[k] for k in ("served_model_name", "prefix", "api_key") if k in args}
    return build_app(args["model"], **ints, **strs)


# --------------------------------------------------------------------------------------------
# Checks before anything is deployed, and hdex-serve --ray
# --------------------------------------------------------------------------------------------


def check_lpus(replicas: int, num_lpu: int) -> None:
    """Raises :class:`RayClusterError` unless the cluster can hold ``replicas`` replicas of
    ``num_lpu`` boards each: a node with that many, room for all, and that many free."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    totals = [int(n.get("Resources", {}).get(LPU, 0)) for n in nodes]
    per_node = ", ".join(f"{n.get('NodeManagerAddress', '?')}: {t}" for n, t in zip(nodes, totals))
    hint = "give each node its boards with `ray start --resources '{\"lpu\": N}'`"
    if max(totals, default=0) < num_lpu:
        raise RayClusterError(
            f"a replica needs {num_lpu} LPU(s) on one node ({{'{LPU}': {num_lpu}}} in Ray), but "
            f"no node of the cluster has that many (LPUs per node: {per_node or 'no nodes'}); "
            f"{hint}, or compile for fewer devices"
        )
    room = sum(t // num_lpu for t in totals)
    if room < replicas:
        raise RayClusterError(
            f"{replicas} replicas of {num_lpu} LPU(s) do not fit: the nodes hold at most "
            f"{room} (LPUs per node: {per_node}); ask for fewer --replicas, or {hint}"
        )
    free = ray.available_resources().get(LPU, 0)
    if free < replicas * num_lpu:
        raise RayClusterError(
            f"{replicas} replicas need {replicas * num_lpu} free LPU(s), the cluster has "
            f"{free:g} free (the rest are held by running work: see `ray status`)"
        )


def _deploy(app: Any, timeout_s: float) -> None:
    """serve.run, bounded: replicas that cannot start in time (no room appeared, a huge model)
    are an error naming the deployments' states, and the application is deleted."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except BaseException as e:  # reported in the caller's thread
            failed.append(e)

    thread = threading.Thread(target=run, name="hyperdex-serve-run", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive() or failed:
        states = _deployment_states()
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)  # before exiting: a later start finds no leftover
        if thread.is_alive():
            raise RayClusterError(
                f"the replicas did not start within {timeout_s:g} s; " + "; ".join(states)
            )
        raise RayClusterError(f"the replicas failed to start: {_reason(failed[0], states)}")


def _deployment_states() -> list[str]:
    """One entry per deployment of the application: its state and Serve's message."""
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception as e:
        return [f"(status unavailable: {e})"]
    if app is None:
        return ["(the application is gone)"]
    return [
        f"{name}: {getattr(d.status, 'value', d.status)} {d.message}".strip()
        for name, d in app.deployments.items()
    ] or [app.message]


def _reason(e: BaseException, states: list[str]) -> str:
    """What went wrong, from Serve's report of a failed constructor (which holds the whole
    traceback): hyperdex's own error when there is one, else the last line."""
    lines = [line for text in (str(e), *states) for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        for kind in ("HyperdexError: ", "FormatError: ", "ConfigError: ", "CapacityError: "):
            if kind in line:
                return line.split(kind, 1)[1].strip()
    return lines[-1].strip() if lines else type(e).__name__


def _port_free(host: str, port: int) -> Optional[str]:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.bind(infos[0][4])
    except OSError as e:
        return str(e)
    return None


def serve_on_ray(args: Any, device_map: Optional[dict[str, int]]) -> int:
    """``hdex-serve MODEL --ray [ADDRESS] --replicas N``: checks the model, the cluster and its
    LPUs, deploys, serves until SIGINT/SIGTERM, then deletes the application (and stops a
    local Ray instance it started). Exit 1 with one line when a check fails."""
    local = args.ray == "local"
    replicas = args.replicas or 1
    try:
        num_lpu = (device_map or {}).get(LPU) or compiled_devices(args.model, args.prefix)
    except HyperdexError as e:
        if local:  # everything runs here: the folder must be here
            print(f"hdex-serve: {e}", file=sys.stderr)
            return 1
        num_lpu = (device_map or {}).get(LPU, 1)
        log.warning("%s; the replicas check on their nodes", e)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # hdex-serve says what matters
    boards = detect_lpus()
    # a local instance gets this machine's boards, or (emulator) as many as the replicas need
    resources = {LPU: float(boards or replicas * num_lpu)}
    try:
        started = connect(None if local else args.ray, resources=resources)
    except RayClusterError as e:
        print(f"hdex-serve: {e}", file=sys.stderr)
        return 1
    try:
        return _serve(args, device_map, replicas, num_lpu, started)
    except RayClusterError as e:
        print(f"hdex-serve: {e}", file=sys.stderr)
        return 1
    finally:
        if started:
            ray.shutdown()


def _serve(
    args: Any, device_map: Optional[dict[str, int]], replicas: int, num_lpu: int, started: bool
) -> int:
    check_lpus(replicas, num_lpu)
    address = args.ray if not started else "a local Ray instance"
    running = serve.status()
    if APP_NAME in running.applications:
        raise RayClusterError(
            f"an application named {APP_NAME!r} already runs on this cluster (another "
            "hdex-serve --ray, or one that was killed); stop that hdex-serve, or delete it with "
            f"`serve.delete({APP_NAME!r})` from a Python process connected to the cluster"
        )
    # Serve's proxies keep the host and port of the first start on a cluster
    head_is_here = started or args.ray.split(":")[0] in ("127.0.0.1", "localhost", "auto")
    if not running.proxies and head_is_here and (why := _port_free(args.host, args.port)):
        raise RayClusterError(f"cannot listen on {args.host}:{args.port}: {why}")
    http: dict[str, Any] = {"host": args.host, "port": args.port}
    if args.ssl_certfile:
        http.update(
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            ssl_keyfile_password=args.ssl_keyfile_password,
        )
    serve.start(http_options=http)
    name = args.served_model_name or str(args.model)
    load_kwargs = {
        "backend": args.backend,
        "num_threads": args.num_threads,
        "enable_prefix_caching": args.prefix_caching,
        "prefix_cache_block_size": args.block_size,
        "prefix_cache_bytes": int(args.prefix_cache_gib * (1 << 30)),
    }
    app = build_app(
        str(args.model),
        replicas=replicas,
        num_lpu=num_lpu,
        served_model_name=name,
        prefix=args.prefix,
        api_key=args.api_key,
        max_queue=args.max_queue,
        max_request_bytes=args.max_request_bytes,
        num_gpu=(device_map or {}).get("gpu", 0),
        load_kwargs=load_kwargs,
    )
    print(
        f"hdex-serve: starting {replicas} replica(s) of {name!r} ({num_lpu} LPU each) on {address}",
        flush=True,
    )
    _deploy(app, START_TIMEOUT_S)
    scheme = "https" if args.ssl_certfile else "http"
    print(
        f"hdex-serve: serving {name!r} from {replicas} replica(s) on Ray; "
        f"{scheme}://{args.host}:{args.port}/v1" + (" (API key required)" if args.api_key else ""),
        flush=True,
    )
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("hdex-serve: stopping the replicas", flush=True)
        with contextlib.suppress(Exception):
            serve.delete(APP_NAME)
    return 0
