"""Gemma (``GemmaForCausalLM``): Llama with embeddings scaled by sqrt(hidden), an RMSNorm
that multiplies by (1 + w) (the converter stores 1 + w), GELU-tanh and head_dim 256."""

from __future__ import annotations

import math

from ..types import ADD_ONE
from .common import llama_names
from .llama import attention_biases, llama_like

GEMMA = llama_like(
    "gemma",
    ("GemmaForCausalLM",),
    lambda c: {**attention_biases(c), "embed_scale": math.sqrt(float(c["hidden_size"]))},
    tensors=llama_names(norm_transform=ADD_ONE),
    activation=("hidden_activation", "hidden_act"),
    default_activation="gelu_pytorch_tanh",
    default_tied=True,
    examples=("google/gemma-2b", "google/gemma-7b"),
)
