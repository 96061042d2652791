"""The architecture table: one record per family of Hugging Face architectures, each in its
own file. Adding an architecture made of known traits is one record here and one test case
(docs/architecture.md, "Adding an architecture")."""

from __future__ import annotations

from ..types import Architecture
from .cohere import COHERE
from .cohere2 import COHERE2
from .exaone import EXAONE
from .exaone4 import EXAONE4
from .falcon import FALCON
from .gemma import GEMMA
from .gemma2 import GEMMA2, GEMMA3
from .gpt2 import GPT2
from .gpt_bigcode import GPT_BIGCODE
from .gpt_neox import GPT_NEOX
from .gptj import GPTJ
from .granite import GRANITE
from .llama import LLAMA
from .mixtral import MIXTRAL
from .olmo import OLMO
from .olmo2 import OLMO2
from .olmoe import OLMOE
from .opt import OPT
from .phi import PHI
from .phi3 import PHI3
from .qwen2 import QWEN2
from .qwen3 import QWEN3
from .qwen3_moe import QWEN3_MOE
from .smollm3 import SMOLLM3
from .stablelm import STABLELM
from .starcoder2 import STARCODER2

ARCHITECTURES: tuple[Architecture, ...] = (
    COHERE,
    COHERE2,
    EXAONE,
    EXAONE4,
    FALCON,
    GEMMA,
    GEMMA2,
    GEMMA3,
    GPT2,
    GPT_BIGCODE,
    GPTJ,
    GPT_NEOX,
    GRANITE,
    LLAMA,
    MIXTRAL,
    OLMO,
    OLMO2,
    OLMOE,
    OPT,
    PHI,
    PHI3,
    QWEN2,
    QWEN3,
    QWEN3_MOE,
    SMOLLM3,
    STABLELM,
    STARCODER2,
)
