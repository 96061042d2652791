"""Shared test setup: offline, quiet, and the tests folder importable (``import helpers``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Set before anything imports transformers/huggingface_hub: never reach the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HYPERDEX_PROGRESS", "0")

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
