"""Phase 1 (fetch): the HF files of a model into ``<compiled>/ckpt/``: from a local folder
(hard links where possible, else copies) or from the Hugging Face Hub when online."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError

# What a compile needs from a HF folder; anything else (README, images, other formats) stays.
_WANTED_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken", ".jinja")


def _wanted(name: str) -> bool:
    return name.endswith(_WANTED_SUFFIXES) and not name.startswith(".")


def copy_local(src: Path, dst: Path) -> list[str]:
    """Links or copies the model files of `src` into `dst`; returns their names."""
    names = sorted(p.name for p in src.iterdir() if p.is_file() and _wanted(p.name))
    if "config.json" not in names:
        raise CheckpointError(
            f"{src} has no config.json; it is not a Hugging Face model folder "
            f"(it holds: {', '.join(sorted(p.name for p in src.iterdir())[:10]) or 'nothing'})"
        )
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dst / name
        tmp = dst / (name + ".partial")
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(src / name, tmp)
        except OSError:
            shutil.copyfile(src / name, tmp)
        tmp.replace(target)
    return names


def download(model_id: str, dst: Path, token: Optional[str] = None) -> list[str]:
    """Downloads a Hub model into `dst` (huggingface_hub); offline, a clear error."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(
            f"cannot download {model_id!r}: HF_HUB_OFFLINE is set. Download the model elsewhere "
            "and pass its local folder as model_id (a folder with config.json and weights)"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise CheckpointError(
            "downloading needs huggingface_hub: pip install huggingface_hub"
        ) from e
    patterns = [f"*{s}" for s in _WANTED_SUFFIXES]
    try:
        snapshot_download(
            repo_id=model_id, local_dir=str(dst), token=token, allow_patterns=patterns
        )
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise CheckpointError(
            f"cannot download {model_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "Check the id and your network/token, or pass a local folder as model_id"
        ) from e
    return sorted(p.name for p in dst.iterdir() if p.is_file() and _wanted(p.name))
