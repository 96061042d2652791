"""Phase 2 (convert): a Hugging Face checkpoint folder -> ``hyperdex_config.json`` +
``hyperdex_model.bin`` (docs/formats.md).

Every tensor's name, shape and dtype is checked against what the config implies before any
data is read; data is then checked for NaN/Inf and for values fp16 cannot hold, renamed to the
canonical scheme (hyperdex/arch/registry.py) and written as float16, one tensor at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from .. import __version__
from ..arch.registry import (
    ADD_ONE,
    ADD_ONE_TILE,
    CONCAT,
    CONV1D_SPLIT,
    FLATTEN,
    FUSED_EXPERTS,
    GROUP_SPLIT,
    HEAD_SPLIT,
    ONES,
    ROW_SPLIT,
    SCALE_RESIDUAL,
    STACKED_EXPERTS,
    TILE,
    TRANSPOSE,
    VECTOR_SPLIT,
    Architecture,
    model_traits,
    rule_applies,
)
from ..arch.spec import canonical_tensors
from ..compiled.record import (
    CONFIG_FORMAT,
    CONFIG_FORMAT_VERSION,
    HYPERDEX_CONFIG_NAME,
    HYPERDEX_MODEL_NAME,
)
from ..errors import CheckpointError, ConfigError
from ..formats import HFCheckpoint, write_model_file
from ..formats.atomic import write_json_atomic
from ..formats.gptq_checkpoint import GPTQImporter, gptq_importer
from .progress import progress_bar

FP16_MAX = 65504.0
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

PathLike = Union[str, Path]


@dataclass(frozen=True)
class _Planned:
    """One HF tensor, the canonical tensors it becomes and how. A CONCAT joins ``parts``
    (one HF tensor per head, ``hf_name`` the first); ONES reads no HF tensor; a
    STACKED_EXPERTS tensor holds ``experts`` experts, each making its share of ``canonical``
    (expert 0's tensors, then expert 1's, ...)."""

    hf_name: str
    canonical: tuple[str, ...]
    transform: str
    parts: tuple[str, ...] = ()
    experts: int = 0

    def hf_names(self) -> tuple[str, ...]:
        if self.transform == ONES:
            return ()
        return self.parts or (self.hf_name,)


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no config.json; point at a Hugging Face model folder (config.json "
            "plus safetensors or pytorch_model.bin weights)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); re-download the model") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return config


def _hf_shape(
    transform: str, canonical: list[tuple[int, ...]], head_dim: int, experts: int = 0
) -> tuple[int, ...]:
    """The HF tensor shape that yields these canonical shapes under `transform` (one part's,
    for CONCAT; ``experts`` stacked experts' for STACKED_EXPERTS)."""
    if transform == STACKED_EXPERTS:  # [experts, one expert's rows, cols]
        one = canonical[: len(canonical) // experts]
        return (experts, sum(s[0] for s in one), *canonical[0][1:])
    if transform == TRANSPOSE:
        return tuple(reversed(canonical[0]))
    if transform == CONV1D_SPLIT:  # Conv1D [in, out_q + out_k + out_v]
        return (canonical[0][1], sum(s[0] for s in canonical))
    if transform in (VECTOR_SPLIT, ROW_SPLIT, HEAD_SPLIT, GROUP_SPLIT):
        return (sum(s[0] for s in canonical), *canonical[0][1:])
    if transform in (TILE, ADD_ONE_TILE, CONCAT):
        return (head_dim,)
    if transform == FLATTEN:
        return (canonical[0][0] // head_dim, head_dim)
    return canonical[0]


def _apply(
    transform: str,
    array: np.ndarray,
    canonical: list[tuple[int, ...]],
    head_dim: int,
    residual_scale: float = 1.0,
    experts: int = 0,
) -> list[np.ndarray]:
    if transform == STACKED_EXPERTS:  # each expert's rows, cut as ROW_SPLIT cuts them
        one = canonical[: len(canonical) // experts]
        cuts = np.cumsum([s[0] for s in one])[:-1]
        return [np.ascontiguousarray(p) for e in array for p in np.split(e, cuts, axis=0)]
    if transform == TRANSPOSE:
        return [np.ascontiguousarray(array.T)]
    if transform in (CONV1D_SPLIT, VECTOR_SPLIT, ROW_SPLIT):
        cuts = np.cumsum([s[0] for s in canonical])[:-1]
        axis = 1 if transform == CONV1D_SPLIT else 0
        parts = np.split(array, cuts, axis=axis)
        return [np.ascontiguousarray(p.T if transform == CONV1D_SPLIT else p) for p in parts]
    rest = array.shape[1:]
    if transform == HEAD_SPLIT:  # [heads, (q, k, v), head_dim, ...]
        heads = canonical[0][0] // head_dim
        per = array.reshape(heads, 3, head_dim, *rest)
        return [np.ascontiguousarray(per[:, j].reshape(heads * head_dim, *rest)) for j in range(3)]
    if transform == GROUP_SPLIT:  # [kv heads, (q * group, k, v), head_dim, ...]
        kv = canonical[1][0] // head_dim
        group = canonical[0][0] // canonical[1][0]
        per = array.reshape(kv, group + 2, head_dim, *rest)
        return [
            np.ascontiguousarray(per[:, :group].reshape(kv * group * head_dim, *rest)),
            np.ascontiguousarray(per[:, group].reshape(kv * head_dim, *rest)),
            np.ascontiguousarray(per[:, group + 1].reshape(kv * head_dim, *rest)),
        ]
    if transform in (ADD_ONE, ADD_ONE_TILE):  # in fp32, rounded to fp16 once
        array = array.astype(np.float32) + np.float32(1.0)
        if transform == ADD_ONE:
            return [array]
    if transform in (TILE, ADD_ONE_TILE):
        return [np.tile(array, canonical[0][0] // array.shape[0])]
    if transform == SCALE_RESIDUAL:  # in fp32, rounded to fp16 once
        return [array.astype(np.float32) * np.float32(residual_scale)]
    if transform == FLATTEN:
        return [array.reshape(-1)]
    return [array]


class AutoModelConverter:
    """Validates a Hugging Face checkpoint folder and converts it to hyperdex's format.

    >>> conv = AutoModelConverter.from_pretrained("/path/to/hf/folder")  # validates
    >>> conv.save_pretrained("/path/to/out")  # writes hyperdex_config.json + hyperdex_model.bin
    """

    def __init__(self, folder: PathLike, quantization: Any = None) -> None:
        from .quantization import resolve_quantization

        # None (fp16), "w4a16", "w8a16", "rtn-w4a16" or a QuantizationConfig.
        self.quantization = resolve_quantization(quantization)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder} is not a folder")
        self.hf_config = read_hf_config(self.folder)
        self.hf_architecture, self.arch, self.model = model_traits(self.hf_config)
        self._expert_layout()
        # What the layer graph reads: the tensors the HF rules must produce, by shape.
        self.shapes = {name: shape for name, (shape, _) in canonical_tensors(self.model).items()}
        # A GPTQ checkpoint's codes and scales are imported as they are, never re-quantized
        # (hyperdex/formats/gptq_checkpoint.py); None for an unquantized checkpoint.
        self.gptq: Optional[GPTQImporter] = gptq_importer(
            self.hf_config,
            self.folder,
            self.hf_architecture,
            self.arch.family,
            (self.model.vocab_size, self.model.embed_dim),
        )
        if self.gptq is not None and self.quantization is not None:
            raise ConfigError(
                f"{self.folder} is already GPTQ-quantized; convert it with quantization=None "
                "to use its quantized weights as they are, or convert the fp16 model to "
                "quantize it with hyperdex"
            )
        self._plan = self._check_tensors()

    @classmethod
    def from_pretrained(cls, folder: PathLike, quantization: Any = None) -> AutoModelConverter:
        return cls(folder, quantization=quantization)

    # -- validation ------------------------------------------------------------------------

    def _expert_layout(self) -> None:
        """A mixture of experts comes one tensor per expert (what save_pretrained writes) or
        stacked, as transformers holds it in memory: the record's FUSED_EXPERTS switch says
        which this checkpoint holds, so the renaming rules of that layout apply."""
        if FUSED_EXPERTS not in self.model.layout:
            return
        stacked = {
            r.hf.replace("{i}", "0") for r in self.arch.tensors if r.transform == STACKED_EXPERTS
        }
        with HFCheckpoint.open(self.folder) as ckpt:
            fused = not stacked.isdisjoint(ckpt.names())
        layout = {**self.model.layout, FUSED_EXPERTS: fused}
        self.model = dataclasses.replace(self.model, layout=layout)

    def _rules(self) -> Iterator[_Planned]:
        arch: Architecture = self.arch
        num_experts = self.model.num_experts
        for rule in arch.tensors:
            if not rule_applies(rule, self.model):
                continue
            layers = range(self.model.num_layers) if "{i}" in rule.canonical[0] else [""]
            # "{e}" in the HF name: one HF tensor per expert, expanded like the layers.
            experts = range(num_experts) if "{e}" in rule.hf else [""]
            for i in layers:
                at_layer = [c.replace("{i}", str(i)) for c in rule.canonical]
                if rule.transform == STACKED_EXPERTS:  # one HF tensor for every expert
                    canonical = tuple(
                        c.replace("{e}", str(e)) for e in range(num_experts) for c in at_layer
                    )
                    hf = rule.hf.replace("{i}", str(i))
                    yield _Planned(hf, canonical, rule.transform, experts=num_experts)
                    continue
                for e in experts:
                    hf = rule.hf.replace("{i}", str(i)).replace("{e}", str(e))
                    canonical = tuple(c.replace("{e}", str(e)) for c in at_layer)
                    parts: tuple[str, ...] = ()
                    if rule.transform == CONCAT:  # one HF tensor per head
                        heads = self.shapes[canonical[0]][0] // self.model.head_dim
                        parts = tuple(hf.replace("{h}", str(h)) for h in range(heads))
                    yield _Planned(hf, canonical, rule.transform, parts)

    def _check_tensors(self) -> list[_Planned]:
        made = {c for p in self._rules() for c in p.canonical}
        if made != set(self.shapes):
            # The architecture table and the layer graph disagree: a hyperdex bug, not the
            # checkpoint's fault.
            raise ConfigError(
                f"hyperdex's {self.arch.family} tensor table and its layer graph disagree for "
                f"this config.json: the table makes {sorted(made - set(self.shapes))[:5]} "
                f"that the graph does not read and lacks {sorted(set(self.shapes) - made)[:5]}; "
                "please report it with the config.json"
            )
        with HFCheckpoint.open(self.folder) as ckpt:
            present = set(ckpt.names())
            plan = list(self._rules())
            quantized: set[str] = set()  # HF tensors of GPTQ-quantized linears
            if self.gptq is not None:
                plan, quantized = self.gptq.check(ckpt, plan, self.shapes)
            # Some checkpoints (old GPT-2 exports) drop the "transformer." prefix.
            rename = self._prefix_fix(plan, present)
            missing, problems = [], []
            hd = self.model.head_dim
            for p in plan:
                shapes = [self.shapes[c] for c in p.canonical]
                want = _hf_shape(p.transform, shapes, hd, p.experts)
                for hf_name in p.hf_names():
                    name = rename.get(hf_name, hf_name)
                    if name not in present:
                        missing.append(hf_name)
                        continue
                    got = tuple(ckpt.shape(name))
                    if got != want:
                        problems.append(
                            f"{name} has shape {list(got)}, config.json implies {list(want)}"
                        )
                    dtype = ckpt.dtype(name)
                    if dtype not in FLOAT_DTYPES:
                        problems.append(f"{name} has dtype {dtype}, expected a float dtype")
            used = {rename.get(n, n) for p in plan for n in p.hf_names()} | quantized
            ignored = [re.compile(pattern) for pattern in self.arch.ignored]
            unexpected = sorted(
                n for n in present - used if not any(r.fullmatch(n) for r in ignored)
            )
        if missing:
            raise CheckpointError(
                f"{self.folder} lacks {len(missing)} tensor(s) that a {self.hf_architecture} with "
                f"this config.json must have, e.g. {', '.join(missing[:5])}; the checkpoint is "
                "incomplete or belongs to another config"
            )
        if problems:
            raise CheckpointError(
                f"{self.folder} disagrees with its config.json: "
                + "; ".join(problems[:5])
                + ("" if len(problems) <= 5 else f"; and {len(problems) - 5} more")
            )
        if unexpected:
            raise CheckpointError(
                f"{self.folder} has {len(unexpected)} tensor(s) a {self.hf_architecture} with this "
                f"config.json does not use, e.g. {', '.join(unexpected[:5])}; is config.json the "
                "one that belongs to these weights?"
            )
        self._rename = rename
        return plan

    @staticmethod
    def _prefix_fix(plan: list[_Planned], present: set[str]) -> dict[str, str]:
        rename = {}
        for p in plan:
            if p.transform != ONES and p.hf_name not in present:
                for prefix in ("transformer.", "model."):
                    if p.hf_name.startswith(prefix) and p.hf_name[len(prefix) :] in present:
                        rename[p.hf_name] = p.hf_name[len(prefix) :]
        return rename

    # -- conversion ------------------------------------------------------------------------

    def _tensors(self, ckpt: HFCheckpoint, bar: Any) -> Iterator[tuple[str, np.ndarray]]:
        hd = self.model.head_dim
        for p in self._plan:
            shapes = [self.shapes[c] for c in p.canonical]
            if p.transform == ONES:  # a parameter-free norm: its gain is 1
                yield p.canonical[0], np.ones(shapes[0], dtype=np.float16)
                bar.update(1)
                continue
            names = [self._rename.get(n, n) for n in p.hf_names()]
            name = names[0]
            data = np.concatenate([ckpt.load(n) for n in names]) if p.parts else ckpt.load(name)
            finite = np.isfinite(data)
            if not finite.all():
                bad = int(data.size - np.count_nonzero(finite))
                raise CheckpointError(
                    f"tensor {name} holds {bad} NaN/Inf value(s); the checkpoint is corrupt or "
                    "was saved after a diverged training step"
                )
            peak = float(np.abs(data).max()) if data.size else 0.0
            if peak > FP16_MAX:
                raise CheckpointError(
                    f"tensor {name} has values up to {peak:.4g}, beyond fp16's {FP16_MAX}; this "
                    "model cannot run with fp16 weights"
                )
            parts = _apply(p.transform, data, shapes, hd, self.model.residual_scale, p.experts)
            for canonical, part in zip(p.canonical, parts):
                yield canonical, part.astype(np.float16)
            bar.update(1)
        if self.gptq is not None:
            yield from self.gptq.tensors(ckpt, lambda: bar.update(1))

    def config_dict(self) -> dict[str, Any]:
        """The content of hyperdex_config.json."""
        gen = {}
        gen_path = self.folder / "generation_config.json"
        if gen_path.is_file():
            try:
                gen = json.loads(gen_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                gen = {}
        tokens = {
            k: gen.get(k, self.hf_config.get(k))
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
        }
        config_bytes = (self.folder / "config.json").read_bytes()
        return {
            "format": CONFIG_FORMAT,
            "format_version": CONFIG_FORMAT_VERSION,
            "hyperdex_version": __version__,
            "architecture": self.hf_architecture,
            "family": self.arch.family,
            "dtype": "float16",
            "quantization": None if self.gptq is None else self.gptq.quantization_section(),
            "model": self.model.to_dict(),
            "tokens": tokens,
            "source": {
                "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
                "model_type": self.hf_config.get("model_type"),
            },
        }

    def save_pretrained(
        self, out_dir: PathLike, progress: bool = True, type_device: str = "u55c"
    ) -> Path:
        """Writes ``hyperdex_config.json`` and ``hyperdex_model.bin`` into ``out_dir``
        (each atomically); returns ``out_dir``. With a quantization the fp16 conversion is
        quantized (GPTQ calibrates on the emulator laid out as ``type_device``) and only the
        quantized model is kept."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.quantization is not None:
            from .calibration import quantize_converted

            staging = out / ".fp16-conversion"
            try:
                self._save_fp16(staging, progress)
                quantize_converted(
                    staging, out, self.quantization, type_device, self.folder, progress
                )
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return out
        return self._save_fp16(out, progress)

    def _save_fp16(self, out: Path, progress: bool) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        config = self.config_dict()
        with (
            HFCheckpoint.open(self.folder) as ckpt,
            progress_bar(
                total=len(self._plan) + (len(self.gptq.entries) if self.gptq else 0),
                desc="convert",
                unit="tensor",
                enabled=progress,
            ) as bar,
        ):
            write_model_file(
                out / HYPERDEX_MODEL_NAME, self._tensors(ckpt, bar), {"config": config}
            )
        _write_json_atomic(out / HYPERDEX_CONFIG_NAME, config)
        return out


def _write_json_atomic(path: Path, data: Any) -> None:
    write_json_atomic(path, data)
