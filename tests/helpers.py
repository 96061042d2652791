"""Shared helpers for the end-to-end tests: tiny seeded Hugging Face checkpoints of every
supported family, compiling them, and comparing logits with a stated tolerance.

Tiny random models are made "non-flat" on purpose (see :func:`randomize`): every weight,
bias and norm gain gets a random value, so a converter that dropped a bias or mixed up two
norms changes the logits by far more than fp16 rounding does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, even by accident
os.environ.setdefault("HYPERDEX_PROGRESS", "0")

VOCAB = 512
MAX_POS = 256

# -- the tiny configs -------------------------------------------------------------------------

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _gpt2(**kw: Any) -> Any:
    from transformers import GPT2Config

    base = dict(
        n_embd=64,
        n_layer=2,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=MAX_POS,
        bos_token_id=0,
        eos_token_id=None,
    )
    base.update(kw)
    return GPT2Config(**base)


def _opt(**kw: Any) -> Any:
    from transformers import OPTConfig

    base = dict(
        hidden_size=64,
        num_hidden_layers=2,
        ffn_dim=128,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=MAX_POS,
        word_embed_proj_dim=64,
        do_layer_norm_before=True,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=None,
        dropout=0.0,
    )
    base.update(kw)
    return OPTConfig(**base)


def _llama(**kw: Any) -> Any:
    from transformers import LlamaConfig

    base = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=MAX_POS,
        rope_scaling=dict(LLAMA3_ROPE),
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=None,
    )
    base.update(kw)
    return LlamaConfig(**base)


def _qwen2(**kw: Any) -> Any:
    from transformers import Qwen2Config

    base = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=MAX_POS,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=None,
    )
    base.update(kw)
    return Qwen2Config(**base)


def _model_class(config: Any) -> Any:
    import transformers

    return getattr(transformers, config.architectures[0]) if config.architectures else None


# name -> (config factory, transformers class name)
CONFIGS: Dict[str, Tuple[Callable[[], Any], str]] = {
    "gpt2": (_gpt2, "GPT2LMHeadModel"),
    "opt": (_opt, "OPTForCausalLM"),
    # OPT-350m's shape: post-norm blocks, no final norm, 32-wide embeddings projected to 64.
    "opt350": (lambda: _opt(do_layer_norm_before=False, word_embed_proj_dim=32), "OPTForCausalLM"),
    "llama": (_llama, "LlamaForCausalLM"),
    "llama_untied": (lambda: _llama(tie_word_embeddings=False), "LlamaForCausalLM"),
    "qwen2": (_qwen2, "Qwen2ForCausalLM"),
}


def _is_norm(name: str) -> bool:
    # "...norm..." (Llama, OPT, Qwen2), GPT-2's ln_1/ln_2/ln_f, Falcon's ln_attn/ln_mlp.
    return "norm" in name or re.search(r"(^|\.)ln_[a-z0-9]+\.", name) is not None


def randomize(model: Any, seed: int, std: float = 0.15) -> None:
    """Gives every parameter a seeded random value: matrices and embeddings N(0, std), biases
    N(0, 0.1), norm gains 1 + N(0, 0.1). Larger than transformers' default init (0.02) so
    the logits spread out (top-k margins well above fp16 noise), and biases/gains non-trivial
    so dropping or swapping one shows in the logits."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if _is_norm(name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias") or p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(std * noise)


def make_hf_model(
    name: str,
    folder: Path,
    seed: int = 0,
    std: float = 0.1,
    config: Any = None,
    row_scale: float = 0.0,
) -> Any:
    """Builds the tiny `name` model (fp32, eval), randomizes it, saves it to `folder`
    (safetensors + config.json + generation_config.json) and returns the torch model.

    ``row_scale`` > 0 multiplies each output-embedding row by exp(row_scale * N(0, 1)), as the
    row norms of a trained LM vary (frequent tokens): a heavy-tailed logit distribution whose
    top-k are well separated even with a 50k vocabulary."""
    import torch
    import transformers

    factory, cls_name = CONFIGS[name]
    cfg = config if config is not None else factory()
    cfg.architectures = [cls_name]
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(cfg).to(torch.float32).eval()
    randomize(model, seed, std)
    if row_scale:
        gen = torch.Generator().manual_seed(seed + 99)
        out = model.get_output_embeddings().weight
        with torch.no_grad():
            out.mul_(torch.exp(row_scale * torch.randn(out.shape[0], 1, generator=gen)))
    model.save_pretrained(str(folder))
    return model


def load_hf_model(folder: Path) -> Any:
    """Reloads a saved checkpoint with transformers in fp32 (what users compare against)."""
    import torch
    from transformers import AutoModelForCausalLM as HFAuto

    return HFAuto.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()


def compile_model(
    folder: Path, prefix: Path, max_length: int = 128, num_device: int = 1, **kw: Any
) -> str:
    from hyperdex.tools import AutoCompiler

    return AutoCompiler().compile(
        model_id=str(folder),
        num_device=num_device,
        max_length=max_length,
        prefix=str(prefix),
        progress=False,
        **kw,
    )


def load_lpu(path: str, num_device: int = 1) -> Any:
    from hyperdex.transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, device_map={"lpu": num_device})


# -- comparisons ------------------------------------------------------------------------------


def excess(ours: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> float:
    """max(|ours - ref| - (atol + rtol * |ref|)): <= 0 means within tolerance."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref) - (atol + rtol * np.abs(ref))))


def within(ours: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> bool:
    return excess(ours, ref, atol, rtol) <= 0.0


def max_abs_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))))


def topk(row: np.ndarray, k: int) -> list:
    """Indices of the k largest values, largest first (stable for exact ties)."""
    row = np.asarray(row)
    return [int(i) for i in np.argsort(-row, kind="stable")[:k]]


def topk_gaps(row: np.ndarray, k: int) -> np.ndarray:
    """The gaps between consecutive values of the k+1 largest: the margins that decide the
    order of the top-k and the membership of the k-th."""
    top = np.sort(np.asarray(row, np.float64))[::-1][: k + 1]
    return top[:-1] - top[1:]


def reseal(folder: Path) -> None:
    """Records the current checksums of a compiled folder's files in its compile.json, for a
    test that edits a memory map (or another recorded file) on purpose to test the checks
    behind the checksums (bounds checks of the core, ...). Without it, loading stops at the
    checksum: "... was changed after the compile"."""
    import json

    from hyperdex.compiled.folder import COMPILE_INFO_NAME, seal_compile_info

    info = json.loads((folder / COMPILE_INFO_NAME).read_text())
    (folder / COMPILE_INFO_NAME).write_text(json.dumps(seal_compile_info(folder, info)))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
