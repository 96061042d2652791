"""The real SmolLM2-135M-Instruct (hyperdex/tools/real_weights.py), compiled once per test
session and shared by the modules that need real text (serving, vLLM API, hybrid)."""

from __future__ import annotations

from pathlib import Path

import pytest

MAX_LENGTH = 1024


def compiled_smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled folder (fast_compile: a second module reuses the first one's compile)."""
    from hyperdex.tools import AutoCompiler
    from hyperdex.tools.real_weights import smollm2_hf_folder

    try:
        folder = smollm2_hf_folder()
    except Exception as e:  # the package is installed by scripts/setup.sh
        pytest.skip(f"real weights unavailable: {e}")
    prefix = tmp_path_factory.getbasetemp() / "smollm2-shared"
    return Path(
        AutoCompiler().compile(
            model_id=str(folder),
            max_length=MAX_LENGTH,
            prefix=prefix,
            fast_compile=True,
            progress=False,
        )
    )
