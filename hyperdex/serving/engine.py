"""What the OpenAI-compatible server and the vLLM-style API share: sampling options with
OpenAI/vLLM names, incremental detokenization with stop strings, log-probabilities, one
generation run, and the :class:`Engine` that serves requests one at a time (a device runs one
sequence at a time) from a fair queue on a worker thread.

A generation's text is built only from the deltas it streams, so a streamed response and a
non-streamed one are the same string by construction; so are their log-probabilities.

Log-probabilities are those of the model's raw output, before any penalty, bias, temperature
or top-k/top-p (vLLM's default ``logprobs_mode="raw_logprobs"``): the log-softmax of the logits
the device returned for that position.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .structured import Grammar, GrammarCompiler, GrammarMatcher

log = logging.getLogger("hyperdex.serve")

__all__ = [
    "MAX_LOGPROBS",
    "Delta",
    "Engine",
    "FairQueue",
    "GenerationResult",
    "IncrementalDetokenizer",
    "Job",
    "Sampling",
    "TokenLogprob",
    "TokenTexts",
    "prompt_logprobs",
    "run_generation",
    "token_logprob",
]

# vLLM's default max_logprobs: the most top log-probabilities a request may ask for
MAX_LOGPROBS = 20


# --------------------------------------------------------------------------------------------
# Sampling options
# --------------------------------------------------------------------------------------------


@dataclass
class Sampling:
    """One request's sampling options, with OpenAI's and vLLM's names and meanings.

    ``temperature`` 0 is greedy (argmax); ``top_k`` 0 or -1 disables top-k; ``max_tokens`` None
    fills the model's context; ``stop`` strings end the text before them (they are not part of
    it unless ``include_stop_str_in_output``); ``stop_token_ids`` end it after the token;
    ``ignore_eos`` generates past the eos token.

    vLLM's: ``min_p`` (after temperature, before top-k/top-p), ``presence_penalty`` and
    ``frequency_penalty`` (on generated tokens), ``logit_bias`` (``{token id: bias}``, added
    first), ``logprobs`` (that many top log-probabilities per generated token, besides the
    chosen token's; None: none) and ``prompt_logprobs`` (the same for the prompt's tokens).
    ``grammar``: structured outputs, the output is constrained to it (compiled by the model's
    :class:`~.structured.GrammarCompiler`).
    """

    max_tokens: Optional[int] = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    grammar: Optional[Grammar] = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = dict(self.logit_bias or {})
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the option (its ``args[1]`` is the option's name)."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name} {why}", name)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        if self.max_tokens is not None and (not is_int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if not is_num(self.temperature) or not 0 <= self.temperature <= 100:
            raise bad("temperature", f"must be a number >= 0, got {self.temperature!r}")
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", f"must be a number in (0, 1], got {self.top_p!r}")
        if not is_int(self.top_k) or self.top_k < -1:
            raise bad("top_k", f"must be an integer >= -1 (0 or -1: off), got {self.top_k!r}")
        if not is_num(self.repetition_penalty) or not 0 < self.repetition_penalty < math.inf:
            raise bad(
                "repetition_penalty",
                f"must be a finite number > 0, got {self.repetition_penalty!r}",
            )
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise bad("seed", f"must be an integer >= 0, got {self.seed!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "must be a string or a list of non-empty strings")
        if not all(is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be a list of token ids (integers >= 0)")
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", f"must be an integer >= 0, got {self.min_tokens!r}")
        for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        if not is_num(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", f"must be a number in [0, 1] (0: off), got {self.min_p!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not is_num(value) or not -2 <= value <= 2:
                raise bad(name, f"must be a number in [-2, 2] (0: off), got {value!r}")
        for token, bias in self.logit_bias.items():
            if not is_int(token) or token < 0:
                raise bad("logit_bias", f"keys must be token ids (integers >= 0), got {token!r}")
            if not is_num(bias) or not math.isfinite(bias):
                raise bad("logit_bias", f"values must be finite numbers, got {bias!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 0):
                raise bad(name, f"must be an integer >= 0 (None: off), got {value!r}")
        if self.grammar is not None and self.min_tokens > 0:
            # The grammar may end the output before min_tokens, whose eos mask would then
            # forbid every token the grammar allows.
            raise bad(
                "min_tokens",
                "cannot be combined with a structured output or tool calls (the grammar may "
                "end the output sooner); drop min_tokens",
            )

    def generate_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """Keyword arguments for ``LPUModelForCausalLM.generate_yield``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": self.min_tokens,
            "repetition_penalty": float(self.repetition_penalty),
            "do_sample": self.temperature > 0,
            "seed": self.seed,
            "stop": list(self.stop_token_ids),
        }
        if self.presence_penalty or self.frequency_penalty:
            kwargs["presence_penalty"] = float(self.presence_penalty)
            kwargs["frequency_penalty"] = float(self.frequency_penalty)
        if self.logit_bias:
            kwargs["logit_bias"] = dict(self.logit_bias)
        if self.temperature > 0:
            kwargs.update(
                temperature=float(self.temperature),
                top_p=float(self.top_p),
                top_k=max(self.top_k, 0),
            )
            if self.min_p > 0:  # vLLM applies min-p before top-k/top-p
                kwargs.update(min_p=float(self.min_p), sampling_order="vllm")
        if self.ignore_eos:
            kwargs["eos_token_id"] = None
        return kwargs

    def replace(self, **changes: Any) -> Sampling:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# Detokenization
# --------------------------------------------------------------------------------------------


class IncrementalDetokenizer:
    """Turns tokens into text deltas as they come.

    The generated ids are decoded whole at every step and the new part of the text is released,
    except a character still being spelled (the text ends in U+FFFD, a multi-byte character
    split across tokens) and, with stop strings, the last ``len(longest stop) - 1`` characters
    (they may be the start of a stop string). A stop string ends the text before it (or after
    it with ``include_stop``). :attr:`text` is the concatenation of the deltas.
    """

    def __init__(
        self,
        tokenizer: Any,
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
        include_stop: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.skip_special_tokens = skip_special_tokens
        self.include_stop = include_stop
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.stopped_by: Optional[str] = None

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)

    def _release(self, upto: str) -> str:
        if not upto.startswith(self.text) or len(upto) <= len(self.text):
            return ""  # a decode that rewrote emitted text (rare): wait for it to settle
        delta = upto[len(self.text) :]
        self.text = upto
        return delta

    def add(self, token: int) -> str:
        """Adds a token; returns the text released by it ('' for none). After a stop string
        :attr:`stopped_by` is set and later tokens are ignored."""
        if self.stopped_by is not None:
            return ""
        self.ids.append(int(token))
        text = self._decode()
        if self.stop:
            found = None
            for s in self.stop:
                i = text.find(s, max(0, len(self.text) - len(s) + 1))
                if i != -1 and (found is None or i < found[0]):
                    found = (i, s)
            if found is not None:
                i, s = found
                self.stopped_by = s
                return self._release(text[: i + len(s)] if self.include_stop else text[:i])
        if text.endswith("\ufffd"):
            return ""
        return self._release(text[: len(text) - self.hold] if self.hold else text)

    def finish(self) -> str:
        """The rest of the text, once generation is over."""
        if self.stopped_by is not None or not self.ids:
            return ""
        return self._release(self._decode())


# --------------------------------------------------------------------------------------------
# Log-probabilities
# --------------------------------------------------------------------------------------------


@dataclass
class TokenLogprob:
    """One position's log-probabilities: the token there (chosen, or the prompt's), its
    log-probability and rank (vLLM's: how many tokens are at least as likely, itself
    included), and the ``n`` most likely tokens as (id, log-probability), most likely first
    (ties by id)."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]]


def token_logprob(logits: np.ndarray, token: int, n: int) -> TokenLogprob:
    """log_softmax of ``logits`` ([vocab], in float64) at ``token``, and the top ``n``."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    peak = x.max()
    lp = x - (peak + np.log(np.exp(x - peak).sum()))
    value = lp[token]
    top: list[tuple[int, float]] = []
    if n > 0:
        n = min(n, lp.size)
        idx = np.argpartition(-lp, n - 1)[:n]
        idx = idx[np.lexsort((idx, -lp[idx]))]
        top = [(int(i), float(lp[i])) for i in idx]
    return TokenLogprob(int(token), float(value), int(np.count_nonzero(lp >= value)), top)


def prompt_logprobs(model: Any, prompt_ids: Sequence[int], n: int) -> list[Optional[TokenLogprob]]:
    """vLLM's ``prompt_logprobs``: None for the first token (nothing predicts it), then each
    token's log-probability under the logits of the position before it. One forward pass of
    the prompt (it leaves the prompt resident, so the generation after it reuses it)."""
    ids = np.asarray([list(prompt_ids)], dtype=np.int64)
    logits = np.asarray(model(ids).logits)[0]
    out: list[Optional[TokenLogprob]] = [None]
    out += [token_logprob(logits[i - 1], int(ids[0, i]), n) for i in range(1, ids.shape[1])]
    return out


class TokenTexts:
    """Each token's own text (vLLM's ``decoded_token``), cached: a piece of a character spelled
    over several tokens reads U+FFFD."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            tok = self.tokenizer
            text = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(int(token_id))])
            self._texts[token_id] = text
        return text


class _StepHooks:
    """What :func:`run_generation` hands ``generate_yield`` as its streamer. ``put`` and
    ``end`` do nothing; GenerationSession looks up ``put_step`` (it gets each step's logits:
    the log-probabilities of each chosen token are kept in :attr:`steps`) and
    ``constrain_logits`` (structured outputs: a grammar masks the logits), so each is there
    only when asked for, and a request that asks for neither costs nothing per step."""

    def __init__(self, logprobs: Optional[int], constraint: Optional[GrammarMatcher]) -> None:
        self.steps: list[TokenLogprob] = []
        self.put_step: Optional[Callable[[int, np.ndarray, np.ndarray], None]] = None
        self.constrain_logits: Optional[Callable[[np.ndarray], np.ndarray]] = None
        if logprobs is not None:
            n = logprobs

            def put_step(token: int, logits: np.ndarray, scores: np.ndarray) -> None:
                self.steps.append(token_logprob(logits, token, n))

            self.put_step = put_step
        if constraint is not None:
            self.constrain_logits = constraint.constrain_logits

    def put(self, value: Any) -> None:
        pass

    def end(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# One generation
# --------------------------------------------------------------------------------------------


@dataclass
class Delta:
    """Text released by a generation, with the log-probabilities of the tokens generated since
    the previous delta (None when not requested). The last delta of a generation may have
    empty text and carry the log-probabilities of tokens that added no text (eos, a stop)."""

    text: str
    logprobs: Optional[list[TokenLogprob]] = None
    # only on a first delta without text, when prompt log-probabilities were asked for
    prompt_logprobs: Optional[list[Optional[TokenLogprob]]] = None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    cached_tokens: int
    stop_reason: Any = None  # the stop string or stop token id that ended it (vLLM)
    logprobs: Optional[list[TokenLogprob]] = None  # one per token of token_ids
    prompt_logprobs: Optional[list[Optional[TokenLogprob]]] = None  # one per prompt token
    token_times: list[float] = field(default_factory=list)  # time.monotonic() of each token

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def cumulative_logprob(self) -> Optional[float]:
        return None if self.logprobs is None else float(sum(t.logprob for t in self.logprobs))


class PromptTooLong(ValueError):
    """The prompt (plus the requested tokens) does not fit the compiled max_length."""


def token_budget(model: Any, prompt_tokens: int, max_tokens: Optional[int]) -> int:
    """The new tokens a request gets; raises PromptTooLong when it does not fit."""
    room = int(model.max_length) - prompt_tokens
    if room < 1:
        raise PromptTooLong(
            f"the prompt has {prompt_tokens} tokens; this model was compiled for a context of "
            f"{model.max_length} tokens, which leaves no room for new ones"
        )
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise PromptTooLong(
            f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceed the "
            f"model's context of {model.max_length} tokens; lower max_tokens to at most {room}"
        )
    return max_tokens


def run_generation(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    sampling: Sampling,
    on_delta: Optional[Callable[[Delta], None]] = None,
    cancelled: Optional[threading.Event] = None,
    grammars: Optional[GrammarCompiler] = None,
) -> GenerationResult:
    """Generates for one prompt on ``model``, calling ``on_delta(Delta)`` as text is released;
    stops early when ``cancelled`` is set (finish_reason "cancelled"). A ``sampling.grammar``
    needs the model's ``grammars``; generation stops once the grammar is complete."""
    budget = token_budget(model, len(prompt_ids), sampling.max_tokens)
    constraint = None
    if sampling.grammar is not None:
        if grammars is None:
            raise ValueError("a constrained generation needs the model's GrammarCompiler")
        constraint = grammars.matcher(sampling.grammar)
    detok = IncrementalDetokenizer(
        tokenizer, sampling.stop, sampling.skip_special_tokens, sampling.include_stop_str_in_output
    )
    stop_ids = set(sampling.stop_token_ids)
    eos_ids = set() if sampling.ignore_eos else set(model.generation_config.eos_token_ids)
    prompt_lp = None
    if sampling.prompt_logprobs is not None:
        prompt_lp = prompt_logprobs(model, prompt_ids, sampling.prompt_logprobs)
        if on_delta is not None:
            on_delta(Delta("", None, prompt_lp))
    hooks = None
    if sampling.logprobs is not None or constraint is not None:
        hooks = _StepHooks(sampling.logprobs, constraint)
    recorder = hooks if sampling.logprobs is not None else None
    sent = 0  # recorder.steps already sent with a delta

    def emit(text: str) -> None:
        nonlocal sent
        logprobs = None
        if recorder is not None:
            logprobs, sent = recorder.steps[sent:], len(recorder.steps)
        if on_delta is not None and (text or logprobs):
            on_delta(Delta(text, logprobs))

    tokens: list[int] = []
    times: list[float] = []
    finish, stop_reason = "length", None
    cached = 0
    kwargs = sampling.generate_kwargs(budget)
    if hooks is not None:
        kwargs["streamer"] = hooks
    stream = model.generate_yield([list(prompt_ids)], **kwargs)
    try:
        for token in stream:
            times.append(time.monotonic())
            if not tokens:
                cached = int(model.last_cached_tokens)
            tokens.append(int(token))
            if constraint is not None:
                constraint.accept(token)
            delta = detok.add(token)
            if delta:
                emit(delta)
            if detok.stopped_by is not None:
                finish, stop_reason = "stop", detok.stopped_by
                break
            if token in stop_ids or token in eos_ids:
                finish, stop_reason = "stop", (int(token) if token in stop_ids else None)
                break
            if constraint is not None and constraint.done:  # ended by the grammar's eos token
                finish = "stop"
                break
            if cancelled is not None and cancelled.is_set():
                finish = "cancelled"
                break
    finally:
        stream.close()
    emit(detok.finish())
    return GenerationResult(
        detok.text,
        tokens,
        finish,
        len(prompt_ids),
        cached,
        stop_reason,
        logprobs=None if recorder is None else recorder.steps,
        prompt_logprobs=prompt_lp,
        token_times=times,
    )


# --------------------------------------------------------------------------------------------
# The serving engine
# --------------------------------------------------------------------------------------------


class Job:
    """One generation waiting for, or holding, the device. The worker thread reports through
    ``sink(kind, payload)``: ("delta", text) while generating, then ("done",
    GenerationResult) or ("error", exception)."""

    def __init__(
        self,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        sink: Callable[[str, Any], None],
        client: str = "",
    ) -> None:
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.sink = sink
        self.client = client
        self.cancelled = threading.Event()
        self.enqueued_at = time.monotonic()
        self.started_at: Optional[float] = None  # when the worker took it

    def cancel(self) -> None:
        """Stops the generation at its next token, or skips it if it has not started."""
        self.cancelled.set()


class FairQueue:
    """Jobs in round-robin order over clients, first come first served within a client: a
    client that sends many requests at once does not hold the others back."""

    def __init__(self, max_jobs: int) -> None:
        self.max_jobs = max_jobs
        self._by_client: OrderedDict[str, deque[Job]] = OrderedDict()
        self._count = 0
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._count

    def put(self, job: Job) -> bool:
        """False when the queue is full."""
        with self._cond:
            if self._count >= self.max_jobs:
                return False
            self._by_client.setdefault(job.client, deque()).append(job)
            self._count += 1
            self._cond.notify()
            return True

    def cancel_all(self) -> int:
        """Cancels every queued job (the worker skips them); returns how many."""
        with self._cond:
            for jobs in self._by_client.values():
                for job in jobs:
                    job.cancel()
            return self._count

    def get(self, timeout: float) -> Optional[Job]:
        """The next job (the next client in turn), or None after ``timeout`` seconds."""
        with self._cond:
            if not self._count and not self._cond.wait_for(lambda: self._count > 0, timeout):
                return None
            client, jobs = next(iter(self._by_client.items()))
            job = jobs.popleft()
            del self._by_client[client]
            if jobs:  # the client's next job waits for everyone else's turn
                self._by_client[client] = jobs
            self._count -= 1
            return job


@dataclass
class EngineStats:
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0


class Engine:
    """Serves jobs on one model, one at a time, on a worker thread. ``on_finish(job, result)``
    (the server's metrics) is called on the worker for every job that ran, before its sink
    hears "done"."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_queue: int = 256,
        on_finish: Optional[Callable[[Job, GenerationResult], None]] = None,
        grammars: Optional[GrammarCompiler] = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.grammars = grammars
        self.queue = FairQueue(max_queue)
        self.stats = EngineStats()
        self.on_finish = on_finish
        self.running: Optional[Job] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="hyperdex-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        job = self.running
        if job is not None:
            job.cancel()
        self._thread.join(timeout)

    def submit(self, job: Job) -> bool:
        """Queues a job; False when the queue is full."""
        return self.queue.put(job)

    def cancel_all(self) -> int:
        """Cancels the running job and every queued one; returns how many."""
        job = self.running
        if job is not None:
            job.cancel()
        return self.queue.cancel_all() + (job is not None)

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self.queue.get(timeout=0.2)
            if job is None:
                continue
            if job.cancelled.is_set():
                self.stats.cancelled += 1
                job.sink("done", None)
                continue
            self.running = job
            job.started_at = time.monotonic()
            try:
                result = run_generation(
                    self.model,
                    self.tokenizer,
                    job.prompt_ids,
                    job.sampling,
                    on_delta=lambda delta, job=job: job.sink("delta", delta),
                    cancelled=job.cancelled,
                    grammars=self.grammars,
                )
            except Exception as e:  # reported to the request; the engine goes on
                self.running = None
                log.exception("generation failed")
                self.stats.failed += 1
                job.sink("error", e)
                continue
            finally:
                # the device is free before any counter says the job ended: /health reads both
                self.running = None
            s = self.stats
            s.generated_tokens += result.completion_tokens
            s.prompt_tokens += result.prompt_tokens
            s.cached_tokens += result.cached_tokens
            if result.finish_reason == "cancelled":
                s.cancelled += 1
            else:
                s.completed += 1
            if self.on_finish is not None:
                try:
                    self.on_finish(job, result)
                except Exception:  # metrics must never fail a request
                    log.exception("recording the request's metrics failed")
            job.sink("done", result)
