"""Host side of text generation: config, logits processing, token choice and stopping.

The device returns fp32 logits for the next position of one sequence (a numpy array of shape
``[vocab]``); everything here runs on the host in numpy and reproduces transformers'
``generate()`` semantics for greedy search and multinomial sampling:

* :class:`GenerationConfig` -- transformers' option names and defaults, plus ``seed`` and
  ``stop``.
* The logits pipeline, in transformers' order: :func:`apply_logit_bias`,
  :func:`apply_repetition_penalty`, :func:`apply_presence_frequency_penalty` (vLLM's),
  :func:`apply_min_new_tokens`, then, only when sampling, :func:`apply_temperature`,
  :func:`apply_top_k`, :func:`apply_top_p` and :func:`apply_min_p` (``sampling_order="vllm"``
  moves min-p before top-k). :class:`LogitsPipeline` chains them for a config.
* Token choice: :func:`greedy_token` (first maximum, as ``torch.argmax``) or :func:`sample_token`
  (from the softmax, with a seeded ``numpy.random.Generator``); :class:`TokenSampler` picks one.
* :class:`StoppingCriteria` -- eos ids, stop ids, stop strings and the length budget.
* :class:`GenerationSession` -- all of the above plus a streamer, for one ``generate()`` call.
  A streamer that also has ``put_step(token, logits, scores)`` gets every step's raw logits
  and processed scores (log-probabilities are computed from them by the serving engine).
  When nothing needs the logits in Python (``needs_logits`` false), the token is chosen next
  to the device instead and handed to ``step_token``: the device's argmax, or when sampling
  the C++ twin of the sampling branch and :func:`sample_token` (csrc/runtime/sampler.cpp),
  fed by ``sampling_args``.

A generate loop (the model class owns the device calls)::

    config = model.generation_config.copy(**kwargs)      # unknown kwargs raise TypeError
    session = GenerationSession(config, prompt_ids, tokenizer=tokenizer, streamer=streamer,
                                max_position_embeddings=n_ctx)
    try:
        if not session.done:
            logits = device.prefill(prompt_ids)            # fp32 [vocab]
            while True:
                token = session.step(logits)
                if session.done:
                    break
                logits = device.decode(token)
    finally:
        session.close()                                    # ends the streamer on errors too
    return session.output_ids                              # prompt + new tokens, int64 [n]
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

import numpy as np

from hyperdex.errors import ConfigError

__all__ = [
    "GenerationConfig",
    "GenerationSession",
    "LogitsPipeline",
    "StoppingCriteria",
    "TokenSampler",
    "apply_logit_bias",
    "apply_min_new_tokens",
    "apply_min_p",
    "apply_presence_frequency_penalty",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "greedy_token",
    "sample_token",
]

StopItem = Union[int, str]

_NEG_INF = np.float32(-np.inf)


# --------------------------------------------------------------------------------------------
# GenerationConfig
# --------------------------------------------------------------------------------------------


class _DefaultMaxLength(int):
    """transformers' default ``max_length`` (20), marked so generate can tell it was never set.

    transformers 5 generates 20 *new* tokens when nobody set ``max_length`` (neither the user
    nor the model's generation_config.json), but counts the prompt once it is set. The value
    compares equal to 20; only its type remembers that it is the untouched default.
    """

    def __repr__(self) -> str:
        return "20"


_DEFAULT_MAX_LENGTH = _DefaultMaxLength(20)

# Options of transformers' GenerationConfig that hyperdex does not implement, with the value
# that makes them a no-op: passing that value is accepted (and ignored) so code written for
# transformers keeps working; any other value raises.
_NOOP_TRANSFORMERS_OPTIONS: dict[str, Any] = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "num_return_sequences": 1,
    "min_length": 0,
    "typical_p": 1.0,
    "top_h": None,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "diversity_penalty": 0.0,
    "length_penalty": 1.0,
    "early_stopping": False,
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "guidance_scale": None,
    "max_time": None,
    "penalty_alpha": None,
    "dola_layers": None,
    "use_cache": True,  # the device always keeps its KV cache
    "output_attentions": False,
    "output_hidden_states": False,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


_TOKEN_ID_LIMIT = 2**31


def _check_token_id(name: str, value: Any) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be a token id (an int >= 0), got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a token id (an int >= 0), got {value}")
    if value >= _TOKEN_ID_LIMIT:  # the device's token ids are int32
        raise ValueError(f"{name} must be a token id below 2^31, got {value}")
    return int(value)


@dataclass
class GenerationConfig:
    """Options of one ``generate()`` call, with transformers' names and defaults.

    transformers options:
        max_length: total length (prompt + new tokens) to stop at. While it is the untouched
            default (20), generation makes 20 *new* tokens, as transformers 5 does ("by default
            always generate 20 new tokens"), capped at the model's context; once set by the user
            or by generation_config.json it counts the prompt.
        max_new_tokens: number of new tokens to stop at; wins over ``max_length``.
        min_new_tokens: eos (and stop token ids) are suppressed until this many new tokens.
        do_sample: False = greedy (argmax); True = multinomial sampling. With False the sampling
            knobs (temperature, top_k, top_p) are ignored, as in transformers.
        temperature: > 0 when sampling; logits are divided by it.
        top_k: keep the k highest logits (ties with the k-th are kept too); 0 disables.
        top_p: nucleus sampling, in (0, 1]; 1.0 disables.
        repetition_penalty: > 0; 1.0 disables. Applies in greedy search too.
        min_p: when sampling, tokens whose probability (after temperature) is below
            ``min_p`` times the top token's are removed; None or 0 disables. In [0, 1].
        eos_token_id: an id or a list of ids that end generation (kept in the output).
        pad_token_id, bos_token_id: recorded for the caller; batch-1 generation never pads.

    hyperdex options:
        seed: seeds the sampler's ``numpy.random.Generator``; the same seed, config and logits
            give the same tokens. None draws fresh entropy on every generate call.
        stop: a list of stop token ids (ints) and/or stop strings. Stop ids behave exactly like
            extra ``eos_token_id`` entries. Stop strings need a tokenizer: after each new token
            the decoded tail of the sequence is searched, and generation stops when a stop string
            ends inside the text of the new token (transformers' ``stop_strings`` rule: a match
            must overlap the last token, so text already in the prompt never matches). The
            token that completes the string is kept and the text is not trimmed. A lone str or
            int is accepted as a one-element list.
        presence_penalty, frequency_penalty: OpenAI's and vLLM's penalties, in [-2, 2]: every
            token already *generated* (the prompt does not count) has ``presence_penalty``
            plus ``frequency_penalty`` times its count subtracted from its logit. Greedy
            search too; 0 disables.
        logit_bias: ``{token id: bias}`` added to the logits before any other processing
            (greedy search too), as vLLM's ``logit_bias``.
        sampling_order: ``"transformers"`` (temperature, top-k, top-p, min-p) or ``"vllm"``
            (temperature, min-p, top-k, top-p); the two differ only when min_p and top_p are
            both set.

    Hyperdex's historical defaults (top_p=0.7, top_k=1, repetition_penalty=1.2) are
    deliberately not used: the defaults are transformers'.

    Construct with keywords, :meth:`from_dict` or :meth:`from_model_dir`; change with
    :meth:`update` (in place) or :meth:`copy` (new object). All of them validate; a value
    assigned directly to an attribute is checked by :meth:`validate`, which
    :class:`GenerationSession` calls.
    """

    max_length: int = _DEFAULT_MAX_LENGTH
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    seed: int | None = None
    stop: list[StopItem] = field(default_factory=list)
    min_p: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    sampling_order: str = "transformers"

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ----------------------------------------------------------------------

    def validate(self) -> None:
        """Check every field's type and range and normalize it (ints for ids, floats for the
        float knobs, lists for ``eos_token_id``/``stop`` given as tuples).

        Raises TypeError for a value of the wrong type and ValueError for one out of range,
        naming the field, the value and the valid range.
        """
        if not _is_int(self.max_length):
            raise TypeError(f"max_length must be an int >= 1, got {self.max_length!r}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be an int >= 1, got {self.max_length}")
        if not isinstance(self.max_length, _DefaultMaxLength):
            self.max_length = int(self.max_length)

        if self.max_new_tokens is not None:
            if not _is_int(self.max_new_tokens):
                raise TypeError(
                    f"max_new_tokens must be None or an int >= 0, got {self.max_new_tokens!r}"
                )
            if self.max_new_tokens < 0:
                raise ValueError(
                    f"max_new_tokens must be None or an int >= 0, got {self.max_new_tokens}"
                )
            self.max_new_tokens = int(self.max_new_tokens)

        if not _is_int(self.min_new_tokens):
            raise TypeError(f"min_new_tokens must be an int >= 0, got {self.min_new_tokens!r}")
        if self.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be an int >= 0, got {self.min_new_tokens}")
        self.min_new_tokens = int(self.min_new_tokens)

        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise TypeError(f"do_sample must be True or False, got {self.do_sample!r}")
        self.do_sample = bool(self.do_sample)

        if not _is_real(self.temperature):
            raise TypeError(f"temperature must be a float > 0, got {self.temperature!r}")
        if not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite float > 0, got {self.temperature}")
        self.temperature = float(self.temperature)
        if self.do_sample and not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 when do_sample=True, got {self.temperature}; "
                "for greedy decoding set do_sample=False instead of temperature=0"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (> 0 to sample), got {self.temperature}")

        if not _is_int(self.top_k):
            raise TypeError(f"top_k must be an int >= 0 (0 disables it), got {self.top_k!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {self.top_k}")
        self.top_k = int(self.top_k)

        if not _is_real(self.top_p):
            raise TypeError(f"top_p must be a float in (0, 1], got {self.top_p!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be a float in (0, 1] (1.0 disables it), got {self.top_p}")
        self.top_p = float(self.top_p)

        if not _is_real(self.repetition_penalty):
            raise TypeError(
                f"repetition_penalty must be a float > 0 (1.0 disables it), "
                f"got {self.repetition_penalty!r}"
            )
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(
                f"repetition_penalty must be a finite float > 0 (1.0 disables it), "
                f"got {self.repetition_penalty}"
            )
        self.repetition_penalty = float(self.repetition_penalty)

        eos = self.eos_token_id
        if eos is not None:
            if isinstance(eos, (list, tuple)):
                self.eos_token_id = [_check_token_id("eos_token_id", e) for e in eos]
            elif _is_int(eos):
                self.eos_token_id = _check_token_id("eos_token_id", eos)
            else:
                raise TypeError(
                    f"eos_token_id must be None, a token id or a list of token ids, got {eos!r}"
                )
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _check_token_id(name, value))

        if self.seed is not None:
            if not _is_int(self.seed):
                raise TypeError(f"seed must be None or an int >= 0, got {self.seed!r}")
            if self.seed < 0:
                raise ValueError(f"seed must be None or an int >= 0, got {self.seed}")
            self.seed = int(self.seed)

        self.stop = _normalize_stop(self.stop)

        if self.min_p is not None:
            if not _is_real(self.min_p) or not 0.0 <= self.min_p <= 1.0:
                raise (TypeError if not _is_real(self.min_p) else ValueError)(
                    f"min_p must be None or a float in [0, 1] (0 disables it), got {self.min_p!r}"
                )
            self.min_p = float(self.min_p)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_real(value):
                raise TypeError(f"{name} must be a float in [-2, 2] (0 disables it), got {value!r}")
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be a float in [-2, 2] (0 disables it), got {value}")
            setattr(self, name, float(value))
        if self.logit_bias is not None:
            self.logit_bias = _normalize_logit_bias(self.logit_bias)
        if self.sampling_order not in ("transformers", "vllm"):
            raise ValueError(
                f"sampling_order must be 'transformers' or 'vllm', got {self.sampling_order!r}"
            )

    # -- derived values ------------------------------------------------------------------

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """``eos_token_id`` as a tuple (empty when None)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, list):
            return tuple(self.eos_token_id)
        return (self.eos_token_id,)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The ints in ``stop``."""
        return tuple(s for s in self.stop if isinstance(s, int))

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The strings in ``stop``."""
        return tuple(s for s in self.stop if isinstance(s, str))

    @property
    def max_length_is_default(self) -> bool:
        """True while ``max_length`` is transformers' untouched default (see the class doc)."""
        return isinstance(self.max_length, _DefaultMaxLength)

    def max_new_tokens_for(
        self, prompt_length: int, max_position_embeddings: int | None = None
    ) -> int:
        """How many new tokens a prompt of ``prompt_length`` tokens may get, as transformers 5
        resolves it: ``max_new_tokens`` if set; else ``max_length - prompt_length`` if
        ``max_length`` was set; else 20, capped so the total stays within
        ``max_position_embeddings`` (when given).

        Raises ValueError where transformers does: the prompt already fills ``max_length`` (or
        the context, for the default).
        """
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length_is_default:
            total = int(self.max_length) + prompt_length
            if max_position_embeddings is not None:
                total = min(total, max_position_embeddings)
            if total <= prompt_length:
                raise ValueError(
                    f"the prompt has {prompt_length} tokens, which fills the model's context of "
                    f"{max_position_embeddings} positions; shorten the prompt"
                )
            return total - prompt_length
        if prompt_length >= self.max_length:
            raise ValueError(
                f"the prompt has {prompt_length} tokens but max_length is {self.max_length} "
                "(max_length counts the prompt); raise max_length or, better, set max_new_tokens"
            )
        return self.max_length - prompt_length

    # -- construction and updates --------------------------------------------------------

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationConfig:
        """Build from a dict such as the contents of a HF ``generation_config.json``.

        Keys that are not fields are ignored (HF files carry many, e.g. ``transformers_version``
        or beam-search options); a None value means "not set" and leaves the default. HF's
        ``stop_strings`` (a str or list) is appended to ``stop``. Bad values raise
        TypeError/ValueError naming the key.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"from_dict expects a dict, got {type(data).__name__}")
        names = cls._field_names()
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in names and v is not None}
        extra_stop = data.get("stop_strings")
        if extra_stop is not None:
            kwargs["stop"] = _normalize_stop(kwargs.get("stop", [])) + _normalize_stop(extra_stop)
        config = cls(**kwargs)
        config._given = frozenset(kwargs)  # set even where equal to a default: to_diff_dict
        return config

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike[str]) -> GenerationConfig:
        """Read a HF model directory's ``generation_config.json`` (or that file, if ``path``
        names it). Without one, take ``bos/eos/pad_token_id`` from ``config.json`` as
        transformers' ``GenerationConfig.from_model_config`` does, or return the defaults.

        Raises FileNotFoundError for a missing path and ConfigError for a file that is not
        valid JSON or holds invalid values.
        """
        path = os.fspath(path)
        if os.path.isfile(path):
            return cls._from_json_file(path, keys=None)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"model directory {path!r} does not exist; pass the folder that holds "
                "config.json and generation_config.json"
            )
        gen_file = os.path.join(path, "generation_config.json")
        if os.path.isfile(gen_file):
            return cls._from_json_file(gen_file, keys=None)
        model_file = os.path.join(path, "config.json")
        if os.path.isfile(model_file):
            return cls._from_json_file(
                model_file, keys=("bos_token_id", "eos_token_id", "pad_token_id")
            )
        return cls()

    @classmethod
    def _from_json_file(cls, file: str, keys: tuple[str, ...] | None) -> GenerationConfig:
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{file} is not valid JSON ({e}); fix or delete the file") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{file} must hold a JSON object, got {type(data).__name__}")
        if keys is not None:
            # config.json keeps the text model's ids under text_config for multimodal models
            text_config = data.get("text_config")
            source = data if not isinstance(text_config, dict) else {**text_config, **data}
            data = {k: source[k] for k in keys if source.get(k) is not None}
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{file}: {e}; fix the value or delete the key") from e

    def _checked_updates(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Map user keywords to field updates; raise on unknown names like a typo would."""
        names = self._field_names()
        nullable = {
            "max_new_tokens",
            "eos_token_id",
            "pad_token_id",
            "bos_token_id",
            "seed",
            "min_p",
            "logit_bias",
        }
        updates: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key == "stop_strings":  # transformers' name for string stops, merged below
                continue
            if key in _NOOP_TRANSFORMERS_OPTIONS:
                noop = _NOOP_TRANSFORMERS_OPTIONS[key]
                if value is None or value == noop:
                    continue
                raise ValueError(
                    f"{key}={value!r} is not supported: hyperdex generates one sequence with "
                    f"greedy search or multinomial sampling; leave {key} unset (or {noop!r})"
                )
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise TypeError(
                    f"unknown generation option {key!r}; {hint}valid options: {', '.join(names)}"
                )
            # None means "not set" for options that cannot be None, as in transformers' generate
            if value is None and key not in nullable and key != "stop":
                continue
            if key == "stop" and value is None:
                value = []
            updates[key] = value
        if kwargs.get("stop_strings") is not None:
            base = _normalize_stop(updates.get("stop", self.stop))
            updates["stop"] = base + _normalize_stop(kwargs["stop_strings"])
        return updates

    def update(self, **kwargs: Any) -> None:
        """Set options in place, all or nothing.

        Unknown names raise TypeError naming the nearest valid option. transformers options
        hyperdex does not implement (num_beams, ...) are accepted only at their no-op value.
        None leaves options that cannot be None unchanged (transformers' "not set");
        ``stop_strings=`` is appended to ``stop``.
        """
        updates = self._checked_updates(kwargs)
        new = dataclasses.replace(self, **updates)  # validates
        for name in self._field_names():
            setattr(self, name, getattr(new, name))
        self._given = getattr(self, "_given", frozenset()) | frozenset(updates)

    def copy(self, **kwargs: Any) -> GenerationConfig:
        """A validated copy with ``kwargs`` applied by the rules of :meth:`update`."""
        new = dataclasses.replace(
            self,
            stop=list(self.stop),
            eos_token_id=(
                list(self.eos_token_id)
                if isinstance(self.eos_token_id, list)
                else self.eos_token_id
            ),
            logit_bias=None if self.logit_bias is None else dict(self.logit_bias),
        )
        new._given = getattr(self, "_given", frozenset())
        new.update(**kwargs)
        return new

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of all fields (the round trip through :meth:`from_dict` turns the
        default ``max_length`` into an explicit 20)."""
        out = dataclasses.asdict(self)
        out["max_length"] = int(self.max_length)
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """The options set apart from the defaults, as transformers' ``to_diff_dict`` gives
        them (its pipelines read a model's generation config through it to decide which of
        their own defaults apply): those that differ from :class:`GenerationConfig`'s
        defaults, and those set explicitly by a file (:meth:`from_dict`), :meth:`update` or
        :meth:`copy` even at a default value (``"do_sample": false`` counts as set, as in
        transformers). ``max_length`` only once set (see the class doc)."""
        given = getattr(self, "_given", frozenset())
        defaults = GenerationConfig().to_dict()
        out: dict[str, Any] = {}
        for name, value in self.to_dict().items():
            if name == "max_length" and self.max_length_is_default:
                continue
            if name in given or value != defaults[name]:
                out[name] = value
        return out


def _normalize_logit_bias(bias: Any) -> dict[int, float]:
    """``{token id: finite float}``; keys may be ints or decimal strings (JSON objects)."""
    if not isinstance(bias, Mapping):
        raise TypeError(f"logit_bias must be a dict of token id -> bias, got {bias!r}")
    out: dict[int, float] = {}
    for key, value in bias.items():
        token = int(key) if isinstance(key, str) and key.strip().isdigit() else key
        token = _check_token_id("a logit_bias key", token)
        if not _is_real(value) or not math.isfinite(value):
            raise ValueError(f"logit_bias[{token}] must be a finite number, got {value!r}")
        out[token] = float(value)
    return out


def _normalize_stop(stop: Any) -> list[StopItem]:
    if stop is None:
        return []
    if isinstance(stop, (str, int, np.integer)) and not isinstance(stop, (bool, np.bool_)):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise TypeError(
            f"stop must be a list of stop token ids (int >= 0) and/or stop strings, got {stop!r}"
        )
    out: list[StopItem] = []
    for item in stop:
        if isinstance(item, str):
            if not item:
                raise ValueError("stop strings must not be empty, got '' in stop")
            out.append(item)
        elif _is_int(item):
            out.append(_check_token_id("stop token id", item))
        else:
            raise TypeError(
                f"stop items must be token ids (int >= 0) or non-empty strings, got {item!r}"
            )
    return out


# --------------------------------------------------------------------------------------------
# Logits processing (numpy twins of transformers' processors; scores have shape [..., vocab])
# --------------------------------------------------------------------------------------------


def _as_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    if not isinstance(scores, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape [vocab], got {type(scores)}")
    if scores.ndim not in (1, 2) or scores.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [vocab] or [batch, vocab], got {scores.shape}")
    if scores.dtype != np.float32:
        if not np.issubdtype(scores.dtype, np.floating):
            raise TypeError(f"{name} must be a float array, got dtype {scores.dtype}")
        scores = scores.astype(np.float32)
    return scores


def apply_repetition_penalty(scores: np.ndarray, ids: np.ndarray, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: the score of every id present in ``ids``
    (prompt + generated) is divided by ``penalty`` if positive, multiplied if negative; each id
    once. Ids >= vocab are ignored. ``ids`` is [n] for scores [vocab], [batch, n] for
    [batch, vocab]. Returns a new array.
    """
    scores = _as_scores(scores)
    vocab = scores.shape[-1]
    ids = np.asarray(ids, dtype=np.int64)
    out = scores.copy()
    if scores.ndim == 1:
        ids = ids[ids < vocab]
        picked = scores[ids]
        out[ids] = np.where(picked < 0, picked * np.float32(penalty), picked / np.float32(penalty))
        return out
    if ids.ndim != 2 or ids.shape[0] != scores.shape[0]:
        raise ValueError(
            f"ids must have shape [batch, n] matching scores {scores.shape}, got {ids.shape}"
        )
    # a padded column absorbs ids >= vocab, as transformers does
    padded = np.concatenate([out, np.zeros((out.shape[0], 1), np.float32)], axis=1)
    clamped = np.minimum(ids, vocab)
    picked = np.take_along_axis(padded, clamped, axis=1)
    penalized = np.where(picked < 0, picked * np.float32(penalty), picked / np.float32(penalty))
    np.put_along_axis(padded, clamped, penalized, axis=1)
    return padded[:, :vocab]


def apply_logit_bias(scores: np.ndarray, bias: Mapping[int, float]) -> np.ndarray:
    """vLLM's ``logit_bias``: ``bias[id]`` is added to the score of each id (float32). An id
    outside the vocab raises ValueError, as vLLM does. Returns a new array."""
    scores = _as_scores(scores)
    vocab = scores.shape[-1]
    out = scores.copy()
    if not bias:
        return out
    ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
    if ids.max() >= vocab or ids.min() < 0:
        bad = int(ids[(ids >= vocab) | (ids < 0)][0])
        raise ValueError(f"logit_bias holds token id {bad}, outside the vocab [0, {vocab})")
    values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    out[..., ids] += values
    return out


def apply_presence_frequency_penalty(
    scores: np.ndarray, generated: np.ndarray, presence: float, frequency: float
) -> np.ndarray:
    """OpenAI's and vLLM's penalties on the *generated* tokens only (``generated``, int [k];
    the prompt is not passed): each id seen ``c`` times loses ``frequency * c + presence``
    (float32, as vLLM's ``logits -= f * counts; logits -= p * mask``). Ids >= vocab are
    ignored. Returns a new array."""
    scores = _as_scores(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape [vocab], got {scores.shape}")
    vocab = scores.shape[-1]
    out = scores.copy()
    ids = np.asarray(generated, dtype=np.int64)
    ids = ids[(ids >= 0) & (ids < vocab)]
    if ids.size == 0:
        return out
    seen, counts = np.unique(ids, return_counts=True)
    out[seen] -= np.float32(frequency) * counts.astype(np.float32)
    out[seen] -= np.float32(presence)
    return out


def apply_min_new_tokens(
    scores: np.ndarray, num_new_tokens: int, min_new_tokens: int, eos_ids: Sequence[int]
) -> np.ndarray:
    """transformers' MinNewTokensLengthLogitsProcessor: while fewer than ``min_new_tokens`` new
    tokens exist, the scores of ``eos_ids`` become -inf (ids >= vocab are ignored)."""
    scores = _as_scores(scores)
    out = scores.copy()
    if num_new_tokens < min_new_tokens:
        vocab = scores.shape[-1]
        ids = [i for i in eos_ids if 0 <= i < vocab]
        out[..., ids] = _NEG_INF
    return out


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """transformers' TemperatureLogitsWarper: ``scores / temperature`` (in float32)."""
    if not (_is_real(temperature) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
    return _as_scores(scores) / np.float32(temperature)


def apply_top_k(scores: np.ndarray, top_k: int, min_tokens_to_keep: int = 1) -> np.ndarray:
    """transformers' TopKLogitsWarper: scores below the k-th highest become -inf; ties with
    the k-th are all kept. k = max(top_k, min_tokens_to_keep), capped at the vocab size.
    O(vocab) (a partition, no sort)."""
    if not _is_int(top_k) or top_k <= 0:
        raise ValueError(f"top_k must be an int > 0, got {top_k!r}")
    scores = _as_scores(scores)
    vocab = scores.shape[-1]
    k = min(max(int(top_k), min_tokens_to_keep), vocab)
    kth = np.partition(scores, vocab - k, axis=-1)[..., vocab - k : vocab - k + 1]
    return np.where(scores < kth, _NEG_INF, scores)


def apply_min_p(scores: np.ndarray, min_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """transformers' MinPLogitsWarper (and vLLM's min_p): tokens whose softmax probability is
    below ``float32(min_p)`` times the top token's become -inf; the ``min_tokens_to_keep`` most
    likely stay.

    Both compute the softmax in float32; here it is float64, which the C++ sampler
    (csrc/runtime/sampler.cpp) reproduces: numpy's float32 ``exp`` is its own SIMD code and
    differs from the C library's in the last bit, enough to put a token that sits at the cut on
    the other side. A float32 softmax decides differently only for such tokens, where numpy's
    and torch's float32 results already disagree."""
    if not (_is_real(min_p) and 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be a float in [0, 1], got {min_p!r}")
    scores = _as_scores(scores)
    peak = scores.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.exp(scores.astype(np.float64) - peak)
        probs = weights / weights.sum(axis=-1, keepdims=True)
    top = probs.max(axis=-1, keepdims=True)
    remove = probs < np.float32(min_p) * top
    k = min(int(min_tokens_to_keep), scores.shape[-1])
    if k > 0:
        keep = np.argpartition(-probs, k - 1, axis=-1)[..., :k]
        np.put_along_axis(remove, keep, False, axis=-1)
    return np.where(remove, _NEG_INF, scores)


# top-p sorts only the finite scores when there are at most this many (e.g. after top-k),
# else it tries these candidate counts (a partition is O(vocab), a sort is not) before
# sorting the whole vocab.
_TOP_P_DIRECT = 1024
_TOP_P_CANDIDATES = (1024, 8192, 32768)


def apply_top_p(scores: np.ndarray, top_p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """transformers' TopPLogitsWarper: sort ascending, take the cumulative softmax and set to
    -inf every token whose cumulative probability is <= 1 - top_p, except the last
    ``min_tokens_to_keep``.

    Ties straddling the cut are ordered by token id (a stable sort); torch's sort is not
    stable beyond 16 elements, so transformers' choice among such ties is arbitrary. Instead of
    sorting the whole vocab, the highest-scoring candidates are found by partition and only
    they are sorted when the rest is certain to be removed (always the case after top-k).
    """
    if not (_is_real(top_p) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a float in (0, 1], got {top_p!r}")
    if not _is_int(min_tokens_to_keep) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be an int >= 1, got {min_tokens_to_keep!r}")
    scores = _as_scores(scores)
    if scores.ndim == 1:
        return _top_p_row(scores, float(top_p), int(min_tokens_to_keep))
    return np.stack([_top_p_row(row, float(top_p), int(min_tokens_to_keep)) for row in scores])


def _top_p_row(scores: np.ndarray, top_p: float, min_keep: int) -> np.ndarray:
    vocab = scores.size
    out = scores.copy()
    # torch compares the float32 cumulative probabilities with (1 - top_p) cast to float32
    threshold = np.float32(1.0 - top_p)
    peak = scores.max()
    if not np.isfinite(peak):  # all -inf, or NaN/inf: torch's softmax gives NaN, removes nothing
        return out
    finite = np.flatnonzero(scores > _NEG_INF)

    if finite.size <= _TOP_P_DIRECT:
        # -inf tokens have probability 0 and come first in the order: only the rest matter
        candidates = finite
        weights = np.exp(scores[finite].astype(np.float64) - float(peak))
        probs_of = weights / weights.sum()  # indexed like `candidates`
        below_mass = 0.0
    else:
        probs = np.exp(scores.astype(np.float64) - float(peak))
        probs /= probs.sum()
        candidates = np.arange(vocab)
        below_mass = 0.0
        # Tokens scoring <= some value v form a prefix of the ascending order whatever the tie
        # order; if their total mass is clearly below the threshold they are all removed, and
        # only the tokens above v need sorting.
        for m in _TOP_P_CANDIDATES:
            if m >= finite.size:
                break
            v = np.partition(scores, vocab - m)[vocab - m]
            below = scores <= v
            mass = float(probs[below].sum())
            # margin: the sum order differs from a full cumsum's by far less than 1e-9
            if mass + 1e-9 < float(threshold) and vocab - int(np.count_nonzero(below)) >= min_keep:
                out[below] = _NEG_INF
                candidates = np.flatnonzero(~below)
                below_mass = mass
                break
        probs_of = probs[candidates]
    n_below = vocab - candidates.size

    rank = np.argsort(scores[candidates], kind="stable")
    # torch's CPU cumsum accumulates float32 in double; the result is float32
    cumulative = (below_mass + np.cumsum(probs_of[rank])).astype(np.float32)
    remove = cumulative <= threshold
    keep_from = vocab - min_keep - n_below  # transformers keeps the last min_keep of the order
    remove[max(keep_from, 0) :] = False
    out[candidates[rank[remove]]] = _NEG_INF
    return out


class LogitsPipeline:
    """The processors a :class:`GenerationConfig` enables, in transformers' order.

    Always: logit bias (if any), repetition penalty (if != 1.0), presence/frequency penalties
    (if != 0), min_new_tokens (if > 0 and there are eos/stop ids). Sampling only: temperature
    (if != 1.0), top-k (if > 0), top-p (if < 1.0), min-p (if > 0; before top-k with
    ``sampling_order="vllm"``).

    Call with the ids so far (prompt + generated, int [n]) and the device's logits ([vocab] or
    [1, vocab], any float dtype); returns float32 scores [vocab], never modifying the input.
    NaN or +inf logits raise FloatingPointError (the device output is broken).
    """

    def __init__(self, config: GenerationConfig, prompt_length: int) -> None:
        config.validate()
        self.config = config
        self.prompt_length = int(prompt_length)
        self.eos_ids = config.eos_token_ids + config.stop_token_ids

    def __call__(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        cfg = self.config
        scores = np.asarray(logits)
        if scores.ndim == 2 and scores.shape[0] == 1:
            scores = scores[0]
        if scores.ndim != 1:
            raise ValueError(
                f"logits must have shape [vocab] (one sequence), got {np.shape(logits)}"
            )
        scores = _as_scores(scores, "logits")
        peak = scores.max()
        if np.isnan(peak) or peak == np.inf:
            raise FloatingPointError(
                "logits contain NaN or +inf; the device produced invalid values (check the "
                "compiled model and its weights)"
            )
        if cfg.logit_bias:
            scores = apply_logit_bias(scores, cfg.logit_bias)
        if cfg.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, ids, cfg.repetition_penalty)
        if cfg.presence_penalty != 0.0 or cfg.frequency_penalty != 0.0:
            scores = apply_presence_frequency_penalty(
                scores, ids[self.prompt_length :], cfg.presence_penalty, cfg.frequency_penalty
            )
        if cfg.min_new_tokens > 0 and self.eos_ids:
            scores = apply_min_new_tokens(
                scores, len(ids) - self.prompt_length, cfg.min_new_tokens, self.eos_ids
            )
        if cfg.do_sample:
            min_p = cfg.min_p or 0.0
            if cfg.temperature != 1.0:
                scores = apply_temperature(scores, cfg.temperature)
            if min_p > 0 and cfg.sampling_order == "vllm":
                scores = apply_min_p(scores, min_p)
            if cfg.top_k != 0:
                scores = apply_top_k(scores, cfg.top_k)
            if cfg.top_p < 1.0:
                scores = apply_top_p(scores, cfg.top_p)
            if min_p > 0 and cfg.sampling_order == "transformers":
                scores = apply_min_p(scores, min_p)
        return scores


# --------------------------------------------------------------------------------------------
# Token choice
# --------------------------------------------------------------------------------------------


def greedy_token(scores: np.ndarray) -> int:
    """The index of the first maximum, as ``torch.argmax``."""
    return int(np.argmax(scores))


def sample_token(scores: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token from ``softmax(scores)`` (1-D) with ``rng``; -inf scores are never drawn.

    One uniform draw per token (inverse CDF), so a seeded ``rng`` gives a reproducible stream.
    Raises ValueError when every score is -inf (nothing can be sampled).
    """
    scores = np.asarray(scores)
    finite = np.flatnonzero(scores > -np.inf)
    if finite.size == 0:
        raise ValueError(
            "every token has probability 0 (all scores are -inf); relax top_k/top_p or "
            "min_new_tokens, or check the logits"
        )
    # after top-k most of the vocab is -inf: work on the survivors only
    values = scores[finite].astype(np.float64)
    weights = np.exp(values - values.max())
    cdf = np.cumsum(weights)
    pick = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    # rounding can put u * total on the last edge; weights > 0 so any index below size is valid
    return int(finite[min(pick, finite.size - 1)])


class TokenSampler:
    """Greedy argmax, or sampling with a ``numpy.random.Generator`` seeded by ``seed``
    (None: fresh OS entropy)."""

    def __init__(self, do_sample: bool, seed: int | None = None) -> None:
        self.do_sample = bool(do_sample)
        self.rng = np.random.default_rng(seed)

    def __call__(self, scores: np.ndarray) -> int:
        return sample_token(scores, self.rng) if self.do_sample else greedy_token(scores)


# --------------------------------------------------------------------------------------------
# Stopping
# --------------------------------------------------------------------------------------------


class StoppingCriteria:
    """Decides after each new token whether generation is over.

    Reasons, checked in this order: ``"eos"`` (an eos_token_id), ``"stop"`` (a stop token id
    or stop string) and ``"length"`` (the new-token budget of
    :meth:`GenerationConfig.max_new_tokens_for` is spent). The token that triggered the stop
    stays in the output, as in transformers.

    Stop strings are matched on decoded text: the last ``4 * longest + 4`` tokens (every token
    adds at least one byte and a character has at most four) are decoded with and without the
    new token, and a stop string matches when it occurs in the text and ends past the part the
    two decodings share, i.e. it overlaps the new token's text.
    """

    def __init__(
        self,
        config: GenerationConfig,
        prompt_length: int,
        tokenizer: Any = None,
        max_position_embeddings: int | None = None,
    ) -> None:
        config.validate()
        self.prompt_length = int(prompt_length)
        self.max_new_tokens = config.max_new_tokens_for(prompt_length, max_position_embeddings)
        self.eos_ids = frozenset(config.eos_token_ids)
        self.stop_ids = frozenset(config.stop_token_ids)
        self.stop_strings = config.stop_strings
        if self.stop_strings and tokenizer is None:
            raise ValueError(
                f"stop strings {list(self.stop_strings)} need a tokenizer to decode the output; "
                "pass tokenizer=... to generate() or use stop token ids"
            )
        self.tokenizer = tokenizer
        longest = max((len(s) for s in self.stop_strings), default=0)
        self.window = 4 * longest + 4

    def __call__(self, ids: Sequence[int] | np.ndarray) -> str | None:
        """``ids``: the whole sequence so far (prompt + generated, at least one new token).
        Returns the reason to stop, or None to go on."""
        last = int(ids[-1])
        if last in self.eos_ids:
            return "eos"
        if last in self.stop_ids:
            return "stop"
        if self.stop_strings and self.matched_stop_string(ids) is not None:
            return "stop"
        if len(ids) - self.prompt_length >= self.max_new_tokens:
            return "length"
        return None

    def matched_stop_string(self, ids: Sequence[int] | np.ndarray) -> str | None:
        """The stop string the last token completes, or None."""
        tail = [int(t) for t in ids[-self.window :]]
        decode = self.tokenizer.decode
        text = decode(tail, skip_special_tokens=False)
        before = decode(tail[:-1], skip_special_tokens=False)
        shared = len(os.path.commonprefix([before, text]))
        for stop in self.stop_strings:
            if text.find(stop, max(0, shared - len(stop) + 1)) != -1:
                return stop
        return None


# --------------------------------------------------------------------------------------------
# One generate() call
# --------------------------------------------------------------------------------------------


class GenerationSession:
    """State of one batch-1 ``generate()`` call: processing, token choice, stopping, streaming.

    Args:
        config: the call's options (validated here).
        prompt_ids: the prompt, int [n] or [1, n] (see ``tensor_io.to_numpy_ids``), n >= 1.
        tokenizer: needed only for stop strings.
        streamer: anything with ``put``/``end`` (hyperdex or transformers streamers). It gets
            the prompt ([1, n] int64) at construction, each new token ([1] int64) from
            :meth:`step`, and ``end()`` once when generation finishes or :meth:`close` is
            called. If it also has ``put_step(token, logits, scores)``, that gets each step's
            chosen token, the logits as given to :meth:`step` (before any processing; the
            caller's buffer, so copy what you keep) and the processed scores, before ``put``.
            If it has ``constrain_logits(logits)``, its result replaces the logits first.
        max_position_embeddings: the model's context, caps the default 20-token budget.

    Use: while not ``done``: feed the device's logits for the last position to :meth:`step`,
    which returns the chosen token; then send that token to the device. The budget can be 0
    (``max_new_tokens=0``), in which case ``done`` is True from the start.
    """

    def __init__(
        self,
        config: GenerationConfig,
        prompt_ids: np.ndarray | Sequence[int],
        tokenizer: Any = None,
        streamer: Any = None,
        max_position_embeddings: int | None = None,
        logits_processor: Sequence[Any] | None = None,
        stopping_criteria: Sequence[Any] | None = None,
    ) -> None:
        prompt = np.asarray(prompt_ids)
        if prompt.ndim == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.ndim != 1 or prompt.size == 0 or not np.issubdtype(prompt.dtype, np.integer):
            raise ValueError(
                f"prompt_ids must be a non-empty int array of shape [n] or [1, n], got "
                f"shape {prompt.shape} dtype {prompt.dtype}"
            )
        config.validate()
        self.config = config
        self.prompt_length = int(prompt.size)
        self.stopping = StoppingCriteria(
            config, self.prompt_length, tokenizer, max_position_embeddings
        )
        self.max_new_tokens = self.stopping.max_new_tokens
        self.pipeline = LogitsPipeline(config, self.prompt_length)
        self.sampler = TokenSampler(config.do_sample, config.seed)
        self._ids = np.empty(self.prompt_length + self.max_new_tokens, dtype=np.int64)
        self._ids[: self.prompt_length] = prompt
        self._length = self.prompt_length
        self.finish_reason: str | None = None
        self.last_scores: np.ndarray | None = None
        self.streamer = streamer
        # the serving engine's log-probabilities come from the raw logits of each step
        self._put_step = getattr(streamer, "put_step", None)
        # structured outputs (hyperdex.serving.structured): a streamer with
        # constrain_logits(logits) -> logits masks what its grammar forbids before any other
        # processing, as vLLM applies its grammar bitmask to the raw logits
        self._constrain = getattr(streamer, "constrain_logits", None)
        self._streamer_ended = False
        # transformers' LogitsProcessor / StoppingCriteria objects (host-side, torch): run
        # after hyperdex's own processing, as transformers appends a caller's list to its own.
        self.user_processors = list(logits_processor or [])
        self.user_criteria = list(stopping_criteria or [])
        if streamer is not None:
            streamer.put(self._ids[None, : self.prompt_length].copy())
        if self.max_new_tokens == 0:
            self._finish("length")

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def needs_logits(self) -> bool:
        """Whether choosing a token needs the logits on the host: whether anything but the
        sampling warpers (temperature, top-k, top-p, min-p) changes the scores or anybody
        reads them (log-probabilities, a grammar, a caller's processors or criteria). If not,
        the token is chosen next to the device and :meth:`step_token` takes it without the
        logits crossing to Python: greedy decoding takes the device's own argmax (the first
        maximum, as :func:`greedy_token`), sampling the C++ sampler's draw
        (:attr:`device_sampling`)."""
        cfg = self.config
        return bool(
            cfg.logit_bias
            or cfg.repetition_penalty != 1.0
            or cfg.presence_penalty != 0.0
            or cfg.frequency_penalty != 0.0
            or (cfg.min_new_tokens > 0 and self.pipeline.eos_ids)
            or self.user_processors
            or self.user_criteria
            or self._put_step is not None
            or self._constrain is not None
        )

    @property
    def device_sampling(self) -> bool:
        """Whether this generation samples and :attr:`needs_logits` is false: each decode step
        is then ``Session.decode_sample(token, *self.sampling_args())``, which runs the device
        and samples its logits in C++ (csrc/runtime/sampler.cpp, the same arithmetic as the
        pipeline and :func:`sample_token`), and the token goes to :meth:`step_token`."""
        return self.config.do_sample and not self.needs_logits

    def sampling_args(self) -> tuple[float, int, float, float, bool, float]:
        """What the C++ sampler takes for the next token: ``(temperature, top_k, top_p, min_p,
        min_p_first, u)``, with ``u`` drawn here from the session's generator. Call it once
        per token it samples: that is the one draw :func:`sample_token` makes, so a seeded
        generation gives the same tokens on either side."""
        if not self.device_sampling:
            raise RuntimeError(
                "sampling_args() is for sampling with nothing else on the host "
                "(device_sampling); this generation passes its logits to step()"
            )
        cfg = self.config
        return (
            cfg.temperature,
            min(cfg.top_k, _TOKEN_ID_LIMIT - 1),  # int32; k is capped at the vocab anyway
            cfg.top_p,
            cfg.min_p or 0.0,
            cfg.sampling_order == "vllm",
            float(self.sampler.rng.random()),
        )

    @property
    def output_ids(self) -> np.ndarray:
        """Prompt + generated tokens, int64 [n] (a copy)."""
        return self._ids[: self._length].copy()

    @property
    def new_ids(self) -> np.ndarray:
        """The generated tokens only, int64 [k] (a copy)."""
        return self._ids[self.prompt_length : self._length].copy()

    def step(self, logits: np.ndarray) -> int:
        """Process the logits for the last position ([vocab] or [1, vocab]), choose, record and
        stream the next token, update :attr:`done`; returns the token id.

        :attr:`last_scores` then holds the processed scores the token was chosen from (float32
        [vocab], a new array: transformers' ``output_scores``)."""
        if self.done:
            raise RuntimeError(
                f"generation already finished ({self.finish_reason}); start a new session"
            )
        ids = self._ids[: self._length]
        if self._constrain is not None:
            logits = self._constrain(logits)
        scores = self.pipeline(ids, logits)
        if np.may_share_memory(scores, logits):  # unprocessed: not the caller's buffer
            scores = scores.copy()
        if self.user_processors:
            scores = self._run_user_processors(ids, scores)
        self.last_scores = scores
        token = self.sampler(scores)
        if self._put_step is not None:
            raw = np.asarray(logits)
            self._put_step(token, raw[0] if raw.ndim == 2 else raw, scores)
        self._accept(token)
        if not self.done and self.user_criteria and self._user_stop(scores):
            self._finish("stop")  # a caller's criterion, as a stop
        return token

    def step_token(self, token: int) -> int:
        """Record, stream and check the next token as :meth:`step` does, where it was chosen
        next to the device because nothing needs the logits (:attr:`needs_logits` is false):
        the device's argmax when greedy, the C++ sampler's draw with :meth:`sampling_args`
        when sampling. :attr:`last_scores` is then None."""
        if self.done:
            raise RuntimeError(
                f"generation already finished ({self.finish_reason}); start a new session"
            )
        if self.needs_logits:
            raise RuntimeError(
                "this generation processes or reads the logits; pass them to step() instead"
            )
        self.last_scores = None
        token = int(token)
        self._accept(token)
        return token

    def _accept(self, token: int) -> None:
        """Appends the chosen token, streams it and checks the stopping criteria."""
        self._ids[self._length] = token
        self._length += 1
        if self.streamer is not None:
            self.streamer.put(np.array([token], dtype=np.int64))
        reason = self.stopping(self._ids[: self._length])
        if reason is not None:
            self._finish(reason)

    def _torch_ids(self, length: int) -> Any:
        import torch

        return torch.from_numpy(self._ids[:length].copy())[None]

    def _run_user_processors(self, ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        import torch

        input_ids = self._torch_ids(len(ids))
        out = torch.from_numpy(np.asarray(scores, dtype=np.float32).copy())[None]
        for processor in self.user_processors:
            out = processor(input_ids, out)
        result = np.asarray(out.detach().cpu().numpy(), dtype=np.float32)
        if result.shape != (1, scores.shape[-1]):
            raise ValueError(
                f"a logits processor ({type(processor).__name__}) returned scores of shape "
                f"{list(result.shape)}, not [1, {scores.shape[-1]}]"
            )
        return result[0]

    def _user_stop(self, scores: np.ndarray) -> bool:
        import torch

        input_ids = self._torch_ids(self._length)
        s = torch.from_numpy(np.asarray(scores, dtype=np.float32).copy())[None]
        return any(bool(torch.as_tensor(c(input_ids, s)).any()) for c in self.user_criteria)

    def close(self) -> None:
        """End the streamer if generation stopped early (e.g. on an error); idempotent."""
        if self.streamer is not None and not self._streamer_ended:
            self._streamer_ended = True
            self.streamer.end()

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.close()
