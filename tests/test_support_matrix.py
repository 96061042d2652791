"""docs/support.md is generated from the architecture table and the architecture tests
(scripts/support_matrix.py) and must be current; every architecture of the table is tested."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_support_matrix_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "support_matrix.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_architecture_of_the_table_has_a_case() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import support_matrix

    from hyperdex.arch.registry import supported_architectures

    tested = support_matrix.cases_by_architecture()
    assert sorted(set(supported_architectures()) - set(tested)) == []
    assert set(HYPERDEX) <= set(supported_architectures())


# The 17 architectures HyperDex lists (issue 15), each here under its HF class name.
HYPERDEX = (
    "CohereForCausalLM",
    "ExaoneForCausalLM",
    "FalconForCausalLM",
    "GemmaForCausalLM",
    "GPT2LMHeadModel",
    "GPTBigCodeForCausalLM",
    "GPTJForCausalLM",
    "GPTNeoXForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "OPTForCausalLM",
    "OlmoForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "StableLmForCausalLM",
    "Starcoder2ForCausalLM",
)
