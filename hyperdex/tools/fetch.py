"""Phase 1 (fetch): the HF files of a model into ``<compiled>/ckpt/``: from a local folder
(hard links where possible, else copies) or from the Hugging Face Hub when online."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from ..errors import CheckpointError
from ..formats.atomic import temp_path

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
        if target.exists() and os.path.samefile(src / name, target):
            continue  # already linked (rename between two links of one file is a no-op)
        tmp = temp_path(target)
        try:
            try:
                os.link(src / name, tmp)
            except OSError:
                shutil.copyfile(src / name, tmp)
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return names


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def _hub(model_id: str) -> Any:
    if _hub_offline():
        raise CheckpointError(
            f"cannot download {model_id!r}: HF_HUB_OFFLINE is set. Download the model elsewhere "
            "and pass its local folder as model_id (a folder with config.json and weights)"
        )
    try:
        import huggingface_hub
    except ImportError as e:  # pragma: no cover - transformers depends on it
        raise CheckpointError(
            "downloading needs huggingface_hub: pip install huggingface_hub"
        ) from e
    return huggingface_hub


def _download_error(model_id: str, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"cannot download {model_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
        "Check the id, your network and your token (token=... or HF_TOKEN for private "
        "models), or pass a local folder as model_id"
    )


def download_config(model_id: str, token: Optional[str] = None) -> dict[str, Any]:
    """Only config.json of a Hub model, for the checks before any large download."""
    hub = _hub(model_id)
    try:
        path = hub.hf_hub_download(repo_id=model_id, filename="config.json", token=token)
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise _download_error(model_id, e) from e
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"the config.json of {model_id!r} is not valid JSON: {e}") from e


def download(model_id: str, dst: Path, token: Optional[str] = None) -> list[str]:
    """Downloads a Hub model into `dst` (huggingface_hub, with its progress bars); offline, a
    clear error pointing at the local-folder route."""
    hub = _hub(model_id)
    patterns = [f"*{s}" for s in _WANTED_SUFFIXES]
    try:
        hub.snapshot_download(
            repo_id=model_id, local_dir=str(dst), token=token, allow_patterns=patterns
        )
    except Exception as e:
        raise _download_error(model_id, e) from e
    return sorted(p.name for p in dst.iterdir() if p.is_file() and _wanted(p.name))
