"""AutoModelForCausalLM: a compiled model on an LPU device (a board, or the emulator), with
the ``transformers`` calling conventions: ``model(input_ids).logits`` and ``generate()``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from ..compiled.folder import (
    COMPILE_INFO_NAME,
    kv_regions,
    read_json,
    read_memory_map,
    resolve_compiled,
)
from ..compiled.session import open_session
from ..errors import ConfigError
from .configuration import LPUConfig
from .device_map import check_device_map, hybrid_gpus
from .generation import GenerationConfig, GenerationSession
from .prefix_cache import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CAPACITY_BYTES,
    KVResidency,
    PrefixCache,
    cache_salt,
)
from .profiling import GenerationStats, PendingStats, RunProfiler
from .tensor_io import IdsKind, from_numpy_ids, to_numpy_ids

log = logging.getLogger("hyperdex")
PathLike = Union[str, Path]


class _NotSupportedLogFilter(logging.Filter):
    """Drops the error transformers' pipelines log for a model whose class name is not one of
    theirs ("The model 'LPUModelForCausalLM' is not supported for text-generation ..."): the
    check compares names only, and the pipeline runs this model all the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("The model 'LPUModelForCausalLM' is not")


# The logger transformers creates later by this name is this same object.
logging.getLogger("transformers.pipelines.base").addFilter(_NotSupportedLogFilter())


class _Output:
    """Indexing as transformers' ModelOutput: by position over the fields that are set, or by
    name (a field that is None is no key)."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key: Union[str, int]) -> Any:
        if isinstance(key, int):
            return self.to_tuple()[key]
        if key in self.keys():
            return getattr(self, key)
        raise KeyError(key)


@dataclass
class CausalLMOutput(_Output):
    """What ``model(input_ids)`` returns, with the fields of transformers' ``CausalLMOutput``
    that the device gives: ``logits`` is [batch, seq, vocab] (fp32), of the input's kind
    (torch tensor, numpy array or nested lists); ``loss`` with ``labels``. Where torch is in
    use it is a transformers ``ModelOutput`` too (:func:`_model_output`)."""

    loss: Any = None
    logits: Any = None


@functools.cache
def _with_model_output(cls: type) -> type:
    """``cls`` as a dataclass on transformers' ModelOutput as well (same fields)."""
    from transformers.utils import ModelOutput

    fields = [(f.name, Any, dataclasses.field(default=None)) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, fields, bases=(ModelOutput, cls))


def _model_output(cls: type, **values: Any) -> Any:
    """An output of ``cls``; where torch is loaded, one that is a transformers ``ModelOutput``
    as well (what transformers' own code checks for). Not otherwise: importing transformers'
    ModelOutput imports torch, which NumPy users need not load."""
    if "torch" in sys.modules:
        return _with_model_output(cls)(**values)
    return cls(**values)


def _torch_seed() -> Optional[int]:
    """A sampler seed drawn from torch's global generator when torch is in use, so that
    ``torch.manual_seed`` / ``transformers.set_seed`` make sampling reproducible as they do in
    transformers; None (fresh entropy) otherwise."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def causal_lm_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """transformers' causal-LM loss: position t predicts label t + 1; labels of -100 are
    ignored; the mean over the rest (NaN when none is left), in float64."""
    shifted, targets = logits[:, :-1].astype(np.float64), labels[:, 1:]
    keep = targets != -100
    if not keep.any():
        return float("nan")
    rows = shifted[keep]
    top = rows.max(axis=-1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(rows - top).sum(axis=-1))
    picked = rows[np.arange(len(rows)), targets[keep]]
    return float(np.mean(log_z - picked))


def _labels(labels: Any, shape: tuple[int, ...], vocab: int) -> np.ndarray:
    """Labels as an int64 array of the ids' shape: token ids or -100 (ignored)."""
    arr = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"labels must be integer token ids of the input's shape {list(shape)}, got "
            f"{arr.dtype} {list(arr.shape)}"
        )
    bad = (arr != -100) & ((arr < 0) | (arr >= vocab))
    if bad.any():
        raise ValueError(
            f"labels hold {int(arr[bad][0])}, neither a token id below {vocab} nor -100 (ignored)"
        )
    return arr.astype(np.int64)


def _logits_out(logits: np.ndarray, kind: IdsKind) -> Any:
    if kind.ndim == 1:
        logits = logits[0]
    if kind.kind == "torch":
        import torch

        t = torch.from_numpy(logits)
        return t.to(kind.device) if kind.device is not None else t
    if kind.kind == "list":
        return logits.tolist()
    return logits


def _mask_array(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    """An attention mask (torch, numpy or lists; 1 = attend, 0 = padding) as a bool array of
    the ids' 2-D shape."""
    array = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    if array.ndim == 1:
        array = array[None]
    if array.shape != shape:
        raise ValueError(f"attention_mask has shape {array.shape}, input_ids has {shape}")
    if array.dtype.kind not in "biuf" or not np.isin(array, (0, 1)).all():
        raise ValueError("attention_mask must hold 1 (a token) and 0 (padding) only")
    return array.astype(bool)


def _check_attention_mask(mask: Any, shape: tuple[int, ...]) -> None:
    if mask is None:
        return
    if not _mask_array(mask, shape).all():
        raise ValueError(
            "attention_mask with padding (zeros) is not supported by the forward call: the LPU "
            "runs one sequence at a time, so pass each sequence unpadded (or a batch of "
            "equal-length rows); generate() takes padded batches"
        )


def _unpadded_prompts(ids: np.ndarray, mask: Any, config: GenerationConfig) -> list[np.ndarray]:
    """Each row's prompt without its padding. The device runs one sequence at a time, so a
    padded position is dropped rather than masked: a row generates as it would alone.

    As transformers' generate: the positions whose ``attention_mask`` is 0 are padding (left
    padding, or anywhere); without a mask, every ``pad_token_id`` in the ids is padding,
    unless the pad is also an eos id (then nothing is, and a batch draws transformers'
    warning, as does a batch without a mask or a pad id)."""
    if mask is not None:
        keep = _mask_array(mask, ids.shape)
    elif config.pad_token_id is not None and config.pad_token_id not in config.eos_token_ids:
        keep = ids != config.pad_token_id
    else:
        keep = np.ones(ids.shape, dtype=bool)
        if ids.shape[0] > 1 and config.eos_token_ids:
            log.warning(
                "hyperdex: the attention mask is not set with a batched input, and cannot be "
                "inferred from it (%s); every token is attended. Pass the tokenizer's "
                "attention_mask to drop padding.",
                "no pad_token_id"
                if config.pad_token_id is None
                else "the pad token is an eos token",
            )
    prompts = [row[k] for row, k in zip(ids, keep)]
    for b, prompt in enumerate(prompts):
        if prompt.size == 0:
            raise ValueError(f"row {b} of the batch is all padding: nothing to generate from")
    return prompts


@dataclass
class GenerateOutput(_Output):
    """``generate(..., return_dict_in_generate=True)``: the fields of transformers'
    GenerateDecoderOnlyOutput that the device gives (a transformers ``ModelOutput`` too where
    torch is in use). ``logits`` (with ``output_logits=True``) and ``scores`` (with
    ``output_scores=True``, after repetition penalty, temperature, top-k/top-p) hold one
    [batch, vocab] fp32 entry per generated token."""

    sequences: Any = None
    scores: Optional[tuple[Any, ...]] = None
    logits: Optional[tuple[Any, ...]] = None


class DeviceGate:
    """Who may use a model's device: one call at a time, a ``generate_yield`` generator from
    its first step until it ends, is closed or is collected.

    Calls from other threads wait their turn. A new call from the holder's own thread cannot
    wait (the holder is suspended in that same thread: a deadlock), so it takes the device over
    and the generation it interrupted fails when resumed. Holders are tokens, not a lock's
    owning thread: a generator may be closed or collected on another thread than its own.
    """

    def __init__(self) -> None:
        # reentrant: a generator collected inside acquire() releases from the same thread
        self._cond = threading.Condition(threading.RLock())
        self._held: list[object] = []  # tokens, the newest last; all of one thread
        self._thread: Optional[int] = None
        self._interrupted: set[object] = set()  # held tokens that a newer call took over

    def acquire(self) -> object:
        """Waits for the device; returns the token to :meth:`release` it with."""
        me = threading.get_ident()
        token = object()
        with self._cond:
            self._cond.wait_for(lambda: not self._held or self._thread == me)
            self._interrupted.update(self._held)
            self._held.append(token)
            self._thread = me
        return token

    def release(self, token: object) -> bool:
        """Gives the device back; False when ``token`` had been taken over (or released)."""
        with self._cond:
            if token not in self._held:
                return False
            self._held.remove(token)
            interrupted = token in self._interrupted
            self._interrupted.discard(token)
            if not self._held:
                self._thread = None
                self._cond.notify_all()
            return not interrupted

    @contextlib.contextmanager
    def hold(self) -> Iterator[object]:
        token = self.acquire()
        try:
            yield token
        finally:
            self.release(token)


class LPUModelForCausalLM:
    """A compiled causal LM loaded onto a device. Create with
    ``AutoModelForCausalLM.from_pretrained``.

    Thread-safe: calls on one model (forward, ``generate``, ``generate_yield``) from several
    threads run one after another (:class:`DeviceGate`). A ``generate_yield`` generator holds
    the device from its first step until it is exhausted, closed or garbage-collected, so
    close one you abandon. A call from the thread holding a paused generator takes the device
    over and the generator raises RuntimeError when resumed.
    """

    # What transformers' pipelines read of a model (text in, text out).
    input_modalities = "text"
    output_modalities = ("text",)

    def __init__(
        self,
        folder: Path,
        session: Any,
        backend: str,
        config: LPUConfig,
        prefix_cache: Optional[PrefixCache] = None,
        hybrid: Any = None,
    ) -> None:
        self.folder = folder
        self.config = config
        self.backend = backend
        self._session = session
        self.prefix_cache = prefix_cache  # None: prefix caching off
        self._kv = KVResidency(session, prefix_cache)  # what the device's KV cache holds
        self.hybrid = hybrid  # hybrid.HybridPrefill: the prompt is prefilled in PyTorch
        self._gate = DeviceGate()  # one call (or one paused generator) at a time
        self._lock = threading.Lock()  # one device call at a time, with the _owner check
        self._tokenizer: Any = None
        self._owner: object = None  # the generation that holds the device's sequence
        self.generation_config = GenerationConfig.from_model_dir(folder / "ckpt")
        self._name_or_path = str(folder)
        # The estimated board time of every call, whatever the backend (docs/cost-model.md).
        self._stats = RunProfiler(folder)
        self._last_stats: Optional[PendingStats] = None

    @property
    def last_stats(self) -> Optional[GenerationStats]:
        """The estimated board time of the last generate / forward call (the cost model on the
        compiled folder's preset), priced when first read; None before any call."""
        return None if self._last_stats is None else self._last_stats.get()

    @classmethod
    def can_generate(cls) -> bool:
        """True, as for a transformers model with ``generate`` (pipelines ask)."""
        return True

    # -- properties --------------------------------------------------------------------------

    @property
    def device(self) -> Any:
        """Where the model's outputs live, as transformers reports it: ``torch.device("cpu")``
        (the string "cpu" without torch), so ``inputs.to(model.device)`` works. The LPU
        itself is ``device_description``."""
        try:
            import torch
        except ImportError:
            return "cpu"
        return torch.device("cpu")

    @property
    def device_description(self) -> str:
        """Where the model runs, in words (a board, the emulator, a ring of them)."""
        return self._session.device

    @property
    def dtype(self) -> Any:
        """The device's activations and (unquantized) weights: float16."""
        try:
            import torch
        except ImportError:
            return np.float16
        return torch.float16

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The model's parameters, counted from its layer graph (a tied LM head once)."""
        from ..arch.spec import canonical_tensors

        total = 0
        for name, (shape, _) in canonical_tensors(self.config.model).items():
            if exclude_embeddings and name in ("tok_embd.weight", "pos_embd.weight"):
                continue
            total += int(np.prod(shape))
        return total

    def to(self, *args: Any, **kwargs: Any) -> LPUModelForCausalLM:
        """Accepted, like ``model.to(device)`` in transformers code, but nothing moves: the
        weights stay on the LPU (see ``device_description``)."""
        log.info(
            "hyperdex: model.to(...) moves nothing; the model runs on %s", self.device_description
        )
        return self

    def eval(self) -> LPUModelForCausalLM:
        """Accepted, like transformers' ``model.eval()``: the LPU only runs inference."""
        return self

    @property
    def max_length(self) -> int:
        """Tokens a sequence may hold (prompt + generated), fixed at compile time."""
        return self._session.max_length

    @property
    def vocab_size(self) -> int:
        return self._session.vocab_size

    def __repr__(self) -> str:
        return (
            f"LPUModelForCausalLM({self.config.architecture}, backend={self.backend!r}, "
            f"device={self.device_description!r}, folder={str(self.folder)!r})"
        )

    # -- forward -----------------------------------------------------------------------------

    def __call__(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        labels: Any = None,
        return_dict: Optional[bool] = None,
        use_cache: Optional[bool] = None,
        **kwargs: Any,
    ) -> Any:
        """Logits for every position of every sequence: [batch, seq, vocab] fp32, and with
        ``labels`` transformers' causal-LM ``loss`` (-100 ignored). ``return_dict=False``
        gives a tuple; ``use_cache`` is accepted (the device keeps its own KV cache).
        ``profile=True`` writes a trace of the estimated board timeline (see generate)."""
        profile = kwargs.pop("profile", None)
        # `is not`, never `in`: a tensor keyword must not be compared element-wise.
        unsupported = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unsupported:
            raise TypeError(
                f"unsupported argument(s) to the forward call: {', '.join(unsupported)}"
            )
        ids, kind = to_numpy_ids(input_ids, "input_ids", vocab_size=self.vocab_size)
        _check_attention_mask(attention_mask, ids.shape)
        self._check_room(ids.shape[1], 0)
        out = np.empty((ids.shape[0], ids.shape[1], self.vocab_size), dtype=np.float32)
        with self._gate.hold(), self._lock:
            self._owner = None
            self._stats.begin(profile)
            for b, row in enumerate(ids):
                self._kv.overwrite()  # every row's logits are wanted: no prefix is skipped
                try:
                    _, out[b] = self._session.prefill(row.astype(np.int32), True)
                except BaseException:
                    self._kv.sync()
                    raise
                self._kv.append(row)
                self._stats.prompt(len(row))
                self._stats.prefill(0, len(row), True)
            self._last_stats = self._stats.finish(self.backend)
        loss: Any = None
        if labels is not None:
            value = causal_lm_loss(out, _labels(labels, ids.shape, self.vocab_size))
            loss = np.float32(value)
            if kind.kind == "torch":
                import torch

                loss = torch.tensor(value, dtype=torch.float32)
        result = _model_output(CausalLMOutput, loss=loss, logits=_logits_out(out, kind))
        return result if return_dict is not False else result.to_tuple()

    forward = __call__

    # -- generation --------------------------------------------------------------------------

    def generate(
        self,
        input_ids: Any = None,
        generation_config: Optional[GenerationConfig] = None,
        streamer: Any = None,
        attention_mask: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Prompt + new token ids, like transformers: [batch, prompt + new] of the input's kind.

        Greedy by default (plain argmax); ``do_sample=True`` with ``temperature``, ``top_k``,
        ``top_p``; ``repetition_penalty``; ``max_new_tokens`` or ``max_length``; ``eos_token_id``
        and ``stop`` (ids or strings); ``seed`` makes sampling reproducible. Rows of a batch run
        one after another (the device runs one sequence at a time); shorter results are padded
        with ``pad_token_id`` (else the first eos id).

        A left-padded batch with its ``attention_mask`` (a tokenizer's ``padding=True``) runs
        each row without its padding, so a row gets the tokens it gets alone; the output keeps
        the input's layout, new tokens appended, as transformers returns it. Without a mask,
        the ``pad_token_id`` tokens are the padding, as transformers infers it (see
        :func:`_unpadded_prompts`).

        Afterwards ``model.last_stats`` holds the estimated board time of what ran (the cost
        model on the compiled preset, whatever the backend); ``profile=True`` (a file or folder
        path, or the ``HYPERDEX_PROFILE`` environment variable) also writes a Chrome/Perfetto
        trace of that timeline.
        """
        if input_ids is None:
            raise TypeError("generate() needs input_ids (token ids of the prompt)")
        profile = kwargs.pop("profile", None)
        hooks = self._pop_hooks(kwargs)
        flags = {}
        for name in ("return_dict_in_generate", "output_logits", "output_scores"):
            flags[name] = kwargs.pop(name, False)
            if not isinstance(flags[name], bool):
                raise TypeError(f"{name} must be True or False, got {flags[name]!r}")
        ids, kind = to_numpy_ids(input_ids, "input_ids", vocab_size=self.vocab_size)
        config = self._config_for(generation_config, kwargs)
        prompts = _unpadded_prompts(ids, attention_mask, config)
        if config.max_new_tokens is None and not config.max_length_is_default:
            # transformers counts a padded batch's whole width against max_length
            config = config.copy(max_new_tokens=config.max_new_tokens_for(ids.shape[1]))
        if config.do_sample and config.seed is None:
            config = config.copy(seed=_torch_seed())
        if streamer is not None and ids.shape[0] != 1:
            raise ValueError("a streamer streams one sequence; pass a batch of 1")
        record = flags["output_logits"] or flags["output_scores"]
        traces: list[list[tuple[np.ndarray, np.ndarray]]] = []
        rows = []
        with self._gate.hold():  # all rows and their stats in one turn
            self._stats.begin(profile)
            for prompt in prompts:
                trace: list[tuple[np.ndarray, np.ndarray]] = []
                tokens = self._generate_row(
                    prompt, config, streamer, trace if record else None, hooks
                )
                rows.append(np.array(list(tokens), dtype=np.int64))
                traces.append(trace)
            self._last_stats = self._stats.finish(self.backend)
        outputs = [np.concatenate([row, new]) for row, new in zip(ids, rows)]
        width = max(len(o) for o in outputs)
        pad = config.pad_token_id
        if pad is None:
            pad = config.eos_token_ids[0] if config.eos_token_ids else 0
        result = np.full((len(outputs), width), pad, dtype=np.int64)
        for i, o in enumerate(outputs):
            result[i, : len(o)] = o
        sequences = from_numpy_ids(result, kind)
        if not flags["return_dict_in_generate"]:
            return sequences
        steps = max(len(t) for t in traces) if record else 0

        def stacked(which: int) -> tuple[Any, ...]:
            out = []
            for s in range(steps):
                step = np.full((len(traces), self.vocab_size), -np.inf, dtype=np.float32)
                for b, t in enumerate(traces):
                    if s < len(t):
                        step[b] = t[s][which]
                out.append(
                    _logits_out(step[:, None, :], IdsKind(kind.kind, 2, kind.device))[:, 0]
                    if kind.kind != "list"
                    else step.tolist()
                )
            return tuple(out)

        return _model_output(
            GenerateOutput,
            sequences=sequences,
            scores=stacked(1) if flags["output_scores"] else None,
            logits=stacked(0) if flags["output_logits"] else None,
        )

    def generate_yield(
        self,
        input_ids: Any,
        generation_config: Optional[GenerationConfig] = None,
        streamer: Any = None,
        attention_mask: Any = None,
        **kwargs: Any,
    ) -> Iterator[int]:
        """Yields each new token id as soon as the device produces it (batch 1); sets
        ``last_stats`` when it ends. Takes generate's options (``profile``, ``tokenizer``,
        ``logits_processor``, ``stopping_criteria``); the positions an ``attention_mask`` marks
        0 are dropped, but without one no token is taken for padding.

        The generator holds the device from its first step until it is exhausted, closed or
        garbage-collected: other threads' calls on this model wait until then. A call from
        this same thread meanwhile (another generator's first step included) takes the device
        over, and this generator raises RuntimeError at its next step."""
        profile = kwargs.pop("profile", None)
        hooks = self._pop_hooks(kwargs)
        ids, _ = to_numpy_ids(input_ids, "input_ids", vocab_size=self.vocab_size)
        if ids.shape[0] != 1:
            raise ValueError("generate_yield() takes one sequence (batch 1)")
        config = self._config_for(generation_config, kwargs)
        # Only a mask marks padding here: the serving engine streams prompts through this
        # call, and a prompt's tokens are never dropped for equalling pad_token_id.
        prompt = (
            ids[0] if attention_mask is None else _unpadded_prompts(ids, attention_mask, config)[0]
        )
        token = self._gate.acquire()
        try:
            self._stats.begin(profile)
            yield from self._generate_row(prompt, config, streamer, None, hooks)
        finally:
            # taken over: the stats (and the device) are someone else's now
            if self._gate.release(token):
                self._last_stats = self._stats.finish(self.backend)

    def _pop_hooks(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Takes generate's host-side options out of ``kwargs``: transformers'
        LogitsProcessorList / StoppingCriteriaList (run only when given), and a tokenizer
        (transformers takes one for stop strings), kept for later calls."""
        tokenizer = kwargs.pop("tokenizer", None)
        if tokenizer is not None:
            self._tokenizer = tokenizer
        return {k: kwargs.pop(k, None) for k in ("logits_processor", "stopping_criteria")}

    def _config_for(
        self, generation_config: Optional[GenerationConfig], kwargs: dict[str, Any]
    ) -> GenerationConfig:
        base = generation_config if generation_config is not None else self.generation_config
        if not isinstance(base, GenerationConfig):
            if not hasattr(base, "to_diff_dict"):
                raise TypeError(
                    "generation_config must be a hyperdex or a transformers GenerationConfig, "
                    f"got {type(base).__name__}"
                )
            # transformers' GenerationConfig: what it sets apart from its defaults, over the
            # model's own generation config (as transformers' generate merges them).
            given = {
                k: v
                for k, v in base.to_diff_dict().items()
                if not k.startswith("_") and k != "transformers_version"
            }
            base = self.generation_config.copy(**given)
        return base.copy(**kwargs)

    def _check_room(self, prompt_length: int, new_tokens: int) -> None:
        if prompt_length + new_tokens > self.max_length:
            what = f"the prompt ({prompt_length} tokens) exceeds"
            if new_tokens:
                what = f"the prompt ({prompt_length} tokens) plus {new_tokens} new tokens exceed"
            raise ValueError(
                f"{what} the max_length of {self.max_length} this model was compiled "
                "for; shorten the prompt, lower max_new_tokens, or recompile with a larger "
                "max_length"
            )

    def _generate_row(
        self,
        prompt: np.ndarray,
        config: GenerationConfig,
        streamer: Any,
        trace: Optional[list[tuple[np.ndarray, np.ndarray]]] = None,
        hooks: Optional[dict[str, Any]] = None,
    ) -> Iterator[int]:
        tokenizer = self._tokenizer_for(config)
        self._check_room(len(prompt), 0)
        session = GenerationSession(
            config,
            prompt,
            tokenizer=tokenizer,
            streamer=streamer,
            max_position_embeddings=self.max_length,
            **(hooks or {}),
        )
        try:
            self._check_room(len(prompt), session.max_new_tokens)
            if session.done:
                return
            # The device holds one sequence. The gate keeps other threads out, but a call from
            # this thread may take the device over while a generator is suspended, so each
            # device call checks that the sequence is still this generation's.
            owner = object()
            with self._lock:
                self._owner = owner
                logits = self._prefill_prompt(prompt)
            # When nothing on the host processes or reads the logits, the token is chosen next
            # to the device: greedy takes its argmax, sampling the C++ sampler's draw on the
            # logits it leaves in C++. One call per step, no logits copied to Python (issue 18).
            on_device = trace is None and not session.needs_logits
            sampled = on_device and session.device_sampling
            chosen = 0
            while True:
                if logits is None:
                    token = session.step_token(chosen)
                else:
                    token = session.step(logits)
                if trace is not None:
                    trace.append((logits.copy(), session.last_scores))
                self._stats.token()
                yield token
                if session.done:
                    break
                with self._lock:
                    if self._owner is not owner:
                        raise RuntimeError(
                            "another call used the device while this generation was paused; "
                            "the device holds one sequence at a time, so start the generation "
                            "again"
                        )
                    position = self._session.position
                    try:
                        if sampled:
                            args = session.sampling_args()
                            chosen = self._session.decode_sample(int(token), *args)
                            logits = None
                        else:
                            chosen, logits = self._session.decode(int(token), not on_device)
                    except BaseException:
                        self._kv.sync()
                        raise
                    self._kv.append([token])
                    self._stats.decode(position)
        finally:
            session.close()

    def _prefill_prompt(self, prompt: np.ndarray) -> np.ndarray:
        """Prefills a prompt after the longest prefix the prefix cache supplies (under the
        device lock); returns the fp32 logits of its last position ([vocab])."""
        try:
            start = self._kv.prepare(prompt)
            if self.hybrid is not None:
                logits = self.hybrid.prefill(self._session, prompt, start)
            else:
                _, rows = self._session.prefill(prompt[start:].astype(np.int32), False)
                logits = rows[0]
        except BaseException:
            self._kv.sync()
            raise
        self._kv.append(prompt[start:])
        self._stats.prompt(len(prompt))
        if self.hybrid is None:  # a hybrid prefill runs on the GPU, not on the device
            self._stats.prefill(start, len(prompt) - start)
        return logits

    @property
    def last_cached_tokens(self) -> int:
        """Prompt tokens of the last generation that came from the prefix cache (resident on
        the device or restored from the pool) instead of being prefilled."""
        return self._kv.last_cached_tokens

    def _tokenizer_for(self, config: GenerationConfig) -> Any:
        if not config.stop_strings:
            return None
        if self._tokenizer is None:
            from .tokenization import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder)
        return self._tokenizer


class AutoModelForCausalLM:
    """``AutoModelForCausalLM.from_pretrained(path_or_model_id, device_map={"lpu": 1})``."""

    def __init__(self) -> None:
        raise TypeError("use AutoModelForCausalLM.from_pretrained(...)")

    @staticmethod
    def from_pretrained(
        model_id: PathLike,
        device_map: Any = None,
        prefix: Optional[PathLike] = None,
        backend: Optional[str] = None,
        num_threads: int = 0,
        enable_prefix_caching: bool = True,
        prefix_cache_block_size: int = DEFAULT_BLOCK_SIZE,
        prefix_cache_bytes: int = DEFAULT_CAPACITY_BYTES,
        timeout: Optional[float] = None,
        **kwargs: Any,
    ) -> LPUModelForCausalLM:
        """Loads a compiled model: the folder ``compile()`` returned, or the same ``model_id``
        and ``prefix`` given to it.

        ``device_map={"lpu": N}`` must match the compile's device count. ``backend`` is
        ``"emu"`` (the C++ emulator) or ``"xrt"`` (a board through XRT, docs/xrt.md); None
        takes a board when XRT sees one and an xclbin is configured, else the emulator, and
        says which. ``num_threads`` sets the emulator's threads (0: all cores). ``timeout``
        (seconds) aborts a run that takes longer, with a DeviceError (default: none on the
        emulator, 60 s on a board).

        Hybrid mode, ``device_map={"gpu": G, "lpu": N}``: prompts are prefilled by PyTorch
        (CUDA if G > 0 and present, else the CPU) from the HF weights in ``ckpt/`` and the KV
        cache is handed to the LPU, which decodes.

        Prefix caching (docs/serving.md): on by default; KV blocks of
        ``prefix_cache_block_size`` positions are kept in a host pool of
        ``prefix_cache_bytes`` (0: only the sequence resident on the device is reused).
        """
        ignored = {"torch_dtype", "dtype", "trust_remote_code", "low_cpu_mem_usage"}
        unknown = sorted(set(kwargs) - ignored)
        if unknown:
            raise TypeError(f"from_pretrained() got unexpected argument(s): {', '.join(unknown)}")
        folder = resolve_compiled(model_id, prefix)
        compile_info = read_json(folder / COMPILE_INFO_NAME, "compile record")
        num_device = check_device_map(device_map, int(compile_info["num_device"]))
        if num_device > 1 and hybrid_gpus(device_map):
            raise ConfigError(
                f"hybrid mode (device_map with 'gpu') hands PyTorch's KV cache to one LPU; this "
                f"model was compiled for {num_device}: recompile with num_device=1 for hybrid mode"
            )
        memory_map = read_memory_map(folder)
        config = LPUConfig.from_pretrained(folder)
        if config.quantization is not None and isinstance(device_map, dict) and "gpu" in device_map:
            raise ConfigError(
                f"hybrid mode prefills with the fp16 Hugging Face weights, but this model was "
                f"compiled with {config.quantization} weights, so the LPU's decode would continue "
                "from a different model; load it with device_map={'lpu': N}, or compile without "
                "quantization for hybrid mode"
            )
        session, backend = open_session(folder, memory_map, backend, num_threads, timeout)
        log.info("hyperdex: loaded %s on %s", folder, session.device)
        if not isinstance(enable_prefix_caching, bool):
            raise TypeError(
                f"enable_prefix_caching must be True or False, got {enable_prefix_caching!r}"
            )
        hybrid = None
        gpus = hybrid_gpus(device_map)
        if gpus or (isinstance(device_map, dict) and "gpu" in device_map):
            from .hybrid import HybridPrefill

            hybrid = HybridPrefill(
                folder,
                gpus,
                [r["name"] for r in kv_regions(memory_map)],
                config.model.num_kv_heads,
                config.model.head_dim,
            )
            log.info("hyperdex: hybrid mode, prefill with %s", hybrid.describe)
        cache = None
        if enable_prefix_caching:
            regions, cols = session.kv_shape
            mode = "lpu" if hybrid is None else f"hybrid:{hybrid.describe}"
            cache = PrefixCache(
                block_size=prefix_cache_block_size,
                block_bytes=int(regions) * int(cols) * 2 * int(prefix_cache_block_size)
                if isinstance(prefix_cache_block_size, int)
                else 0,
                capacity_bytes=prefix_cache_bytes,
                salt=cache_salt(folder, memory_map, mode),
            )
        model = LPUModelForCausalLM(folder, session, backend, config, cache, hybrid)
        model._name_or_path = str(model_id)
        return model
