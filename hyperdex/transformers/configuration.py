"""AutoConfig: the configuration of a compiled model, as transformers users know it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from ..arch.record import ModelRecord, as_record
from ..compiled.folder import COMPILE_INFO_NAME, read_json, resolve_compiled
from ..compiled.record import HYPERDEX_CONFIG_NAME, check_config_version, scheme_name

PathLike = Union[str, Path]


class LPUConfig:
    """The HF model config (attributes such as ``vocab_size``, ``hidden_size``) plus the
    runtime parameters of the compile: ``num_device``, ``max_length``, ``type_device``,
    ``quantization``, ``architecture``."""

    def __init__(
        self,
        folder: Path,
        hf_config: dict[str, Any],
        compile_info: dict[str, Any],
        hyperdex_config: dict[str, Any],
    ) -> None:
        self._folder = folder
        self._hf = hf_config
        self.num_device: int = int(compile_info["num_device"])
        self.max_length: int = int(compile_info["max_length"])
        self.type_device: str = compile_info["type_device"]
        recorded = compile_info.get("quantization")
        # The scheme's short name ("w4a16", "rtn-w4a16", None for fp16) and, as in
        # transformers, the whole record as ``quantization_config``.
        self.quantization: Optional[str] = scheme_name(recorded) if recorded else None
        self.quantization_config: Optional[dict[str, Any]] = recorded or None
        self.architecture: str = hyperdex_config["architecture"]
        self.hyperdex_version: str = compile_info.get("hyperdex_version", "")
        # The model record, typed (hyperdex.arch.record).
        where = "hyperdex_config.json's model"
        self.model: ModelRecord = as_record(hyperdex_config["model"], where)

    @classmethod
    def from_pretrained(cls, model_id: PathLike, prefix: Optional[PathLike] = None) -> LPUConfig:
        folder = resolve_compiled(model_id, prefix)
        converted_path = folder / "ckpt" / HYPERDEX_CONFIG_NAME
        converted = read_json(converted_path, "converted config")
        check_config_version(converted, converted_path)
        return cls(
            folder,
            read_json(folder / "ckpt" / "config.json", "HF config"),
            read_json(folder / COMPILE_INFO_NAME, "compile record"),
            converted,
        )

    @property
    def compiled_folder(self) -> Path:
        return self._folder

    @property
    def architectures(self) -> list[str]:
        return [self.architecture]

    @property
    def max_position_embeddings(self) -> int:
        """The positions this compiled model holds (its KV cache, ``max_length``), not the
        checkpoint's (``checkpoint_max_position_embeddings``), which the device cannot reach."""
        return self.max_length

    @property
    def checkpoint_max_position_embeddings(self) -> int:
        return int(self.model.max_position_embeddings)

    @property
    def dtype(self) -> str:
        """What the device computes in: float16 (logits come back in float32)."""
        return "float16"

    torch_dtype = dtype

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not set above: fall back to the HF config's fields.
        hf = self.__dict__.get("_hf", {})
        if name in hf:
            return hf[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._hf,
            "num_device": self.num_device,
            "max_length": self.max_length,
            "type_device": self.type_device,
            "quantization": self.quantization,
            "quantization_config": self.quantization_config,
            "max_position_embeddings": self.max_position_embeddings,
            "checkpoint_max_position_embeddings": self.checkpoint_max_position_embeddings,
            "dtype": self.dtype,
        }

    def __repr__(self) -> str:
        return (
            f"LPUConfig({self.architecture}, num_device={self.num_device}, "
            f"max_length={self.max_length}, type_device={self.type_device!r}, "
            f"quantization={self.quantization!r}, folder={str(self._folder)!r})"
        )


class AutoConfig:
    """``AutoConfig.from_pretrained(path_or_model_id, prefix=None)`` -> :class:`LPUConfig`."""

    def __init__(self) -> None:
        raise TypeError("use AutoConfig.from_pretrained(...)")

    @staticmethod
    def from_pretrained(model_id: PathLike, prefix: Optional[PathLike] = None) -> LPUConfig:
        return LPUConfig.from_pretrained(model_id, prefix)
