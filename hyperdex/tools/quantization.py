"""Weight quantization schemes: what ``compile(quantization=...)`` accepts.

``QuantizationConfig`` names its fields after transformers' ``GPTQConfig`` where they overlap,
so a user who knows one knows the other. The device stores symmetric integer codes with one
fp16 scale per group of consecutive input features (docs/formats.md, "Quantized matrices"),
which bounds what a config may ask for: 4 or 8 bits, ``sym=True``, and groups that stay
contiguous in input order (``desc_act`` needs ``static_groups``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

from ..errors import ConfigError

__all__ = ["QuantizationConfig", "resolve_quantization", "SCHEMES"]

METHODS = ("gptq", "rtn")
DatasetArg = Union[None, str, Sequence[int], Sequence[Sequence[int]]]


# GPTQ as the presets run it: act-order with static groups (the groups stay in input order,
# as the device streams them) and the scale search. On SmolLM2-135M this closes 58% of
# round-to-nearest's perplexity gap at 4 bits, against 31% for GPTQConfig's defaults
# (docs/benchmarks.md, "Quantization").
GPTQ_PRESET: dict[str, Any] = {"desc_act": True, "static_groups": True, "mse": 2.0}


@dataclass(frozen=True)
class QuantizationConfig:
    """How to quantize the linear layers' weights.

    Args:
        bits: 4 or 8 (weights; activations stay fp16: W4A16 / W8A16).
        group_size: input features per fp16 scale; -1 for one scale per output row.
        sym: symmetric codes (the only kind the device stores).
        desc_act: GPTQ's act_order: quantize columns by decreasing Hessian diagonal.
        static_groups: fix each group's scale from the unquantized weights before GPTQ runs
            (required with ``desc_act``, so groups stay contiguous in input order).
        act_group_aware: GPTQModel's group-aware reordering (GAR): GPTQ visits whole groups
            by decreasing largest Hessian diagonal, and each group's columns by theirs, so the
            important weights are quantized first while every group's scale is still found as
            GPTQ reaches it (not with ``desc_act`` or ``static_groups``).
        damp_percent: Hessian damping, as a fraction of its mean diagonal.
        mse: 0: each group's scale comes from its largest weight; > 0: the scale is searched
            (the largest weight's, shrunk by up to 19% in 1% steps) for the least
            ``sum |w - w'|^mse`` over the group, GPTQ's "mse" option (GPTQModel's name; 2.4 is
            the usual norm). Used by GPTQ and RTN alike.
        method: ``"gptq"`` or ``"rtn"`` (round to nearest, no calibration).
        dataset: calibration data: None (the English text shipped with hyperdex,
            ``hyperdex.data.calibration_text()``), a text, or token ids (one list, or a list
            of samples).
        nsamples: calibration samples (windows of ``seqlen`` tokens).
        seqlen: tokens per calibration sample.
        quantize_lm_head: quantize the LM head too (off by default, as in most GPTQ tools).
        seed: picks the calibration windows.
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    desc_act: bool = False
    static_groups: bool = False
    act_group_aware: bool = False
    damp_percent: float = 0.01
    mse: float = 0.0
    method: str = "gptq"
    dataset: DatasetArg = field(default=None, compare=True)
    nsamples: int = 128
    seqlen: int = 512
    quantize_lm_head: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        def integer(name: str, value: Any, ok: bool, need: str) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or not ok:
                raise ConfigError(f"QuantizationConfig.{name} must be {need}, got {value!r}")

        integer("bits", self.bits, self.bits in (4, 8), "4 or 8 (W4A16 or W8A16)")
        integer(
            "group_size",
            self.group_size,
            isinstance(self.group_size, int)
            and (self.group_size == -1 or (self.group_size > 0 and self.group_size % 2 == 0)),
            "a positive even number of input features per scale (int4 codes pack two per "
            "byte), or -1 (one scale per row)",
        )
        for name in ("sym", "desc_act", "static_groups", "act_group_aware", "quantize_lm_head"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"QuantizationConfig.{name} must be True or False, got {getattr(self, name)!r}"
                )
        if not self.sym:
            raise ConfigError(
                "QuantizationConfig.sym=False is not supported: the LPU's weight format stores "
                "one fp16 scale per group and no zero points; use sym=True"
            )
        if self.desc_act and not self.static_groups:
            raise ConfigError(
                "desc_act=True needs static_groups=True: the LPU streams each group's scale and "
                "then its consecutive input features, so groups must stay contiguous in input "
                "order; use static_groups=True (or desc_act=False)"
            )
        if self.act_group_aware and (self.desc_act or self.static_groups):
            raise ConfigError(
                "act_group_aware=True orders whole groups itself and finds each group's scale "
                "as GPTQ reaches it: use it with desc_act=False and static_groups=False (or "
                "desc_act=True with static_groups=True instead)"
            )
        damp = self.damp_percent
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp < 1:
            raise ConfigError(
                f"QuantizationConfig.damp_percent must be a number in (0, 1), got {damp!r}"
            )
        mse = self.mse
        if isinstance(mse, bool) or not isinstance(mse, (int, float)) or not 0 <= mse <= 10:
            raise ConfigError(
                "QuantizationConfig.mse must be 0 (scales from each group's largest weight) or "
                f"the norm of the scale search, up to 10 (2.4 is usual), got {mse!r}"
            )
        if self.method not in METHODS:
            raise ConfigError(
                f"QuantizationConfig.method must be one of {METHODS}, got {self.method!r}"
            )
        integer(
            "nsamples",
            self.nsamples,
            isinstance(self.nsamples, int) and self.nsamples > 0,
            "a positive integer",
        )
        integer(
            "seqlen",
            self.seqlen,
            isinstance(self.seqlen, int) and self.seqlen > 1,
            "an integer > 1",
        )
        integer("seed", self.seed, isinstance(self.seed, int), "an integer")
        if self.dataset is not None and not isinstance(self.dataset, str):
            if not _is_ids(self.dataset):
                raise ConfigError(
                    "QuantizationConfig.dataset must be None, a text, or token ids (a list of "
                    f"ints or a list of lists of ints), got {type(self.dataset).__name__}"
                )

    @classmethod
    def from_scheme(cls, name: str, **overrides: Any) -> QuantizationConfig:
        """A named scheme's settings (``"w4a16"``, ``"rtn-w8a16"`` ...), with some changed:
        ``QuantizationConfig.from_scheme("w4a16", nsamples=32, seqlen=256)``."""
        if not isinstance(name, str) or name.lower() not in SCHEMES:
            raise ConfigError(
                f"unknown quantization scheme {name!r}; choose one of "
                f"{', '.join(repr(s) for s in SCHEMES)}"
            )
        return cls(**{**SCHEMES[name.lower()], **overrides})

    @property
    def scheme(self) -> str:
        """The short name: ``w4a16``, ``w8a16``, ``rtn-w4a16`` ..."""
        base = f"w{self.bits}a16"
        return base if self.method == "gptq" else f"{self.method}-{base}"

    @property
    def variant(self) -> str:
        """The compiled folder's suffix: the scheme, plus what differs from its preset
        (``w4a16``, ``w4a16-g64``, ``w8a16-row``, ``w4a16-head``; GPTQ's column order when
        not act-order: ``-gar``, ``-static``, ``-inorder``; ``-mse0`` ...)."""
        tag = self.scheme
        if self.group_size != 128:
            tag += "-row" if self.group_size == -1 else f"-g{self.group_size}"
        mse = GPTQ_PRESET["mse"] if self.method == "gptq" else 0.0
        if self.method == "gptq" and not self.desc_act:
            tag += (
                "-gar" if self.act_group_aware else "-static" if self.static_groups else "-inorder"
            )
        if self.mse != mse:
            tag += f"-mse{self.mse:g}"
        if self.quantize_lm_head:
            tag += "-head"
        return tag

    def to_dict(self) -> dict[str, Any]:
        """What the compiled folder records (the dataset by description, not by content)."""
        d = asdict(self)
        d["dataset"] = _describe_dataset(self.dataset)
        d["scheme"] = self.scheme
        return d


def _is_ids(data: Any) -> bool:
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence) or len(data) == 0:
        return False
    if all(isinstance(t, int) and not isinstance(t, bool) for t in data):
        return True
    return all(
        isinstance(s, Sequence)
        and not isinstance(s, (str, bytes))
        and len(s) > 0
        and all(isinstance(t, int) and not isinstance(t, bool) for t in s)
        for s in data
    )


def _describe_dataset(data: DatasetArg) -> str:
    if data is None:
        return "hyperdex.data.calibration_text"
    if isinstance(data, str):
        return f"text ({len(data)} characters)"
    n = sum(len(s) for s in data) if isinstance(data[0], Sequence) else len(data)
    return f"token ids ({n} tokens)"


# The strings compile() and hdex-compile accept, with what they mean.
SCHEMES: dict[str, dict[str, Any]] = {
    "w4a16": {"bits": 4, "group_size": 128, "method": "gptq", **GPTQ_PRESET},
    "w8a16": {"bits": 8, "group_size": 128, "method": "gptq", **GPTQ_PRESET},
    "rtn-w4a16": {"bits": 4, "group_size": 128, "method": "rtn"},
    "rtn-w8a16": {"bits": 8, "group_size": 128, "method": "rtn"},
}


def resolve_quantization(quantization: Any) -> Optional[QuantizationConfig]:
    """None (fp16) or the QuantizationConfig that ``quantization`` names."""
    if quantization is None or quantization in ("none", "fp16"):
        return None
    if isinstance(quantization, QuantizationConfig):
        return quantization
    if isinstance(quantization, str) and quantization.lower() in SCHEMES:
        return QuantizationConfig.from_scheme(quantization)
    raise ConfigError(
        f"quantization must be None (fp16), one of {', '.join(repr(s) for s in SCHEMES)}, or a "
        f"hyperdex.tools.QuantizationConfig; got {quantization!r}"
    )
