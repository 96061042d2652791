"""File formats hyperdex reads and writes: Hugging Face checkpoints (input) and the
converted-model file ``hyperdex_model.bin`` (output of conversion)."""

from __future__ import annotations

from hyperdex.formats.hf_checkpoint import (
    PT_WEIGHTS_INDEX_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    HFCheckpoint,
)
from hyperdex.formats.model_file import (
    MODEL_FILE_ALIGNMENT,
    MODEL_FILE_DTYPES,
    MODEL_FILE_MAGIC,
    MODEL_FILE_NAME,
    MODEL_FILE_VERSION,
    ModelFile,
    TensorInfo,
    write_model_file,
)

__all__ = [
    "HFCheckpoint",
    "MODEL_FILE_ALIGNMENT",
    "MODEL_FILE_DTYPES",
    "MODEL_FILE_MAGIC",
    "MODEL_FILE_NAME",
    "MODEL_FILE_VERSION",
    "ModelFile",
    "PT_WEIGHTS_INDEX_NAME",
    "PT_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "TensorInfo",
    "write_model_file",
]
