"""hyperdex.transformers: run compiled models with the ``transformers`` API
(AutoConfig, AutoTokenizer, AutoModelForCausalLM, TextStreamer, pipeline)."""

from __future__ import annotations

from .configuration import AutoConfig, LPUConfig
from .generation import GenerationConfig
from .modeling import AutoModelForCausalLM, CausalLMOutput, LPUModelForCausalLM
from .pipelines import pipeline
from .streamers import BaseStreamer, TextIteratorStreamer, TextStreamer
from .tokenization import AutoTokenizer

__all__ = [
    "AutoConfig",
    "AutoModelForCausalLM",
    "AutoTokenizer",
    "BaseStreamer",
    "CausalLMOutput",
    "GenerationConfig",
    "LPUConfig",
    "LPUModelForCausalLM",
    "TextIteratorStreamer",
    "TextStreamer",
    "pipeline",
]
