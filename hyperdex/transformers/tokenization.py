"""AutoTokenizer: the Hugging Face tokenizer kept in the compiled folder (``ckpt/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from ..compiled.folder import TOKENIZER_FILES, resolve_compiled
from ..errors import ConfigError

PathLike = Union[str, Path]


class AutoTokenizer:
    """``AutoTokenizer.from_pretrained(path_or_model_id, prefix=None, **kwargs)`` returns the
    model's ``transformers`` tokenizer (a ``PreTrainedTokenizerFast`` or similar), loaded
    offline from the compiled folder; ``kwargs`` go to transformers."""

    def __init__(self) -> None:
        raise TypeError("use AutoTokenizer.from_pretrained(...)")

    @staticmethod
    def from_pretrained(
        model_id: PathLike, prefix: Optional[PathLike] = None, **kwargs: Any
    ) -> Any:
        import transformers

        path = Path(model_id).expanduser()
        if any((path / f).is_file() for f in TOKENIZER_FILES):
            folder = path  # a plain HF folder works too
        else:
            folder = resolve_compiled(model_id, prefix) / "ckpt"
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(
                f"{folder} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}): the source "
                "checkpoint had none. Add the tokenizer files to the HF folder and recompile, or "
                "pass token ids directly"
            )
        kwargs.setdefault("local_files_only", True)
        return transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
