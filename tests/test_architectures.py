"""Every architecture from one layer graph: the proof that an entry of the architecture table
(hyperdex/arch/families/) compiles, runs and is priced like transformers' own model.

Adding an architecture is one entry of CASES below (a function returning a tiny transformers
config) plus running this file. Each case is built with transformers (fp32, eager attention,
a fixed seed, every weight randomized by helpers.randomize so the logits spread out), saved
with save_pretrained, compiled by hyperdex and run on the emulator, and checked six ways:

1. the prompt's logits against transformers in fp32, and their top-5 (near-ties may swap);
2. 32 greedy tokens against transformers' greedy ``generate``;
3. the prompt's logits on rings of 2 and 4 devices against one device;
4. compiled as RTN W4A16 and W8A16: finite, close to the fp16 model (8 bits closer), not
   bit-identical to it; and in hybrid mode (PyTorch prefills, the LPU decodes) transformers'
   greedy tokens; a case's distinguishing trait (a window, clip_qkv, logit_scale) moves
   transformers' own logits far past the tolerance, so ignoring it would fail check 1;
5. ``estimate()`` prices it from its config.json alone, streaming exactly the weights of the
   compiled model's memory plan and decode program;
6. the explorer (``hdex-explore -m folder``) reads the same sizes as the registry.

The configs use shapes the defaults never give: odd vocabularies (251, 317: padded on every
ring), head_dim apart from hidden/heads, grouped (6 heads over 2 KV heads) and multi-query
(1 KV head) attention, tied and untied heads, OPT's projected embeddings with post-norm
blocks, a sliding window shorter than the prompt, biases on q/k/v, and mixtures of 6 experts
(2 or 3 per token, their weights renormalized or not) whose routing is clear of fp16 noise.

Each model is compiled once per (device count, quantization) in a module-scoped cache; the
whole file (38 cases, 392 tests) runs in about a minute on 2 cores. Measured worst error of
each case, as a fraction of its check's allowance (1.0 would fail; tolerances defined below);
the greedy and top-5 checks pass in every case:

    case                       fp16   2 dev  4 dev  W4A16  W8A16
    gpt2                       0.08   0.07   0.07   0.37   0.11
    opt                        0.07   0.06   0.08   0.29   0.08
    llama                      0.16   0.08   0.08   0.71   0.20
    llama_mqa                  0.13   0.11   0.09   0.48   0.20
    mistral                    0.13   0.07   0.09   0.51   0.15
    qwen2                      0.22   0.09   0.11   0.68   0.20
    qwen2_window               0.10   0.07   0.07   0.51   0.17
    gpt_neox                   0.06   0.06   0.04   0.25   0.09
    gpt_neox_sequential        0.06   0.06   0.05   0.24   0.12
    gptj                       0.08   0.05   0.06   0.23   0.09
    phi                        0.07   0.05   0.05   0.34   0.08
    phi_qk_norm                0.07   0.05   0.05   0.27   0.08
    phi3                       0.11   0.07   0.07   0.53   0.13
    phi3_longrope              0.17   0.10   0.08   0.86   0.21
    gemma                      0.04   0.04   0.04   0.23   0.07
    stablelm                   0.12   0.11   0.09   0.69   0.19
    stablelm_parallel_qk_norm  0.11   0.07   0.07   0.42   0.12
    starcoder2                 0.07   0.07   0.08   0.37   0.12
    falcon_7b                  0.07   0.06   0.06   0.31   0.10
    falcon_40b                 0.06   0.05   0.05   0.32   0.08
    gpt_bigcode                0.09   0.06   0.07   0.36   0.12
    gpt_bigcode_mha            0.07   0.08   0.06   0.28   0.07
    cohere                     0.08   0.05   0.06   0.33   0.12
    cohere_qk_norm             0.11   0.06   0.06   0.51   0.15
    olmo                       0.11   0.08   0.11   0.60   0.19
    exaone                     0.10   0.09   0.08   0.43   0.15
    qwen3                      0.10   0.07   0.08   0.46   0.17
    smollm3                    0.09   0.08   0.10   0.54   0.14
    granite                    0.08   0.06   0.06   0.27   0.09
    gemma2                     0.13   0.12   0.12   0.49   0.17
    gemma3                     0.18   0.11   0.18   0.69   0.23
    cohere2                    0.13   0.08   0.12   0.50   0.18
    exaone4                    0.17   0.14   0.11   0.80   0.22
    phi4_mini                  0.12   0.07   0.07   0.50   0.18
    olmo2                      0.14   0.08   0.08   0.50   0.18
    mixtral                    0.09   0.08   0.07   0.73   0.12
    qwen3_moe                  0.10   0.06   0.06   0.50   0.10
    olmoe                      0.07   0.07   0.08   0.53   0.13
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import helpers as H
import numpy as np
import pytest
import torch

# -- the table: one entry per case -----------------------------------------------------------


# What every Llama-keyed case shares: 2 layers, 128 positions, token 0 as BOS and no EOS (so
# greedy runs all 32 steps).
TINY: Dict[str, Any] = dict(
    num_hidden_layers=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=None
)


def _gpt2() -> Any:
    from transformers import GPT2Config

    # Learned positions, Conv1D weights split into q/k/v, tied head, odd vocabulary.
    return GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        vocab_size=251,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=None,
    )


def _opt() -> Any:
    from transformers import OPTConfig

    # OPT-350m's shape: post-norm blocks, no final norm, 48-wide embeddings projected to 64.
    return OPTConfig(
        **TINY,
        hidden_size=64,
        ffn_dim=160,
        num_attention_heads=4,
        vocab_size=317,
        word_embed_proj_dim=48,
        do_layer_norm_before=False,
        pad_token_id=None,
        dropout=0.0,
    )


def _llama() -> Any:
    from transformers import LlamaConfig

    # GQA 6 over 2 and head_dim 24 while hidden/heads is 16 (q is 144 wide on a 96-wide
    # model), Llama-3 RoPE scaling, untied head.
    return LlamaConfig(
        **TINY,
        hidden_size=96,
        intermediate_size=160,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=24,
        vocab_size=317,
        rope_scaling=dict(H.LLAMA3_ROPE),
        tie_word_embeddings=False,
    )


def _llama_mqa() -> Any:
    from transformers import LlamaConfig

    # Multi-query attention (one KV head for 4 query heads), tied head.
    return LlamaConfig(
        **TINY,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        vocab_size=251,
        tie_word_embeddings=True,
    )


def _mistral() -> Any:
    from transformers import MistralConfig

    # A sliding window of 8 positions, shorter than the 20-token prompt.
    return MistralConfig(
        **TINY,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        vocab_size=317,
        tie_word_embeddings=False,
    )


def _qwen2() -> Any:
    from transformers import Qwen2Config

    # Biases on q/k/v only, GQA 6 over 2, tied head.
    return Qwen2Config(
        **TINY,
        hidden_size=96,
        intermediate_size=160,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=251,
        tie_word_embeddings=True,
    )


def _rope(partial: float = 1.0, **kw: Any) -> Dict[str, Any]:
    return {"rope_theta": 10000.0, "rope_type": "default", "partial_rotary_factor": partial, **kw}


def _gpt_neox(parallel: bool) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import GPTNeoXConfig

        # Rows of query_key_value grouped per head, rotary over a quarter of each 16-wide
        # head; the parallel residual reads two norms of the same input.
        return GPTNeoXConfig(
            **TINY,
            hidden_size=64,
            intermediate_size=160,
            num_attention_heads=4,
            vocab_size=251,
            rope_parameters=_rope(0.25),
            use_parallel_residual=parallel,
        )

    return make


def _gptj() -> Any:
    from transformers import GPTJConfig

    # Interleaved rotary over 6 of each head's 12 dims, a parallel block off one norm, a
    # biased untied LM head.
    return GPTJConfig(
        n_embd=48,
        n_layer=2,
        n_head=4,
        n_inner=112,
        rotary_dim=6,
        vocab_size=317,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=None,
    )


def _phi(qk: bool) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import PhiConfig

        # Parallel block off one LayerNorm, half the head rotated, biases everywhere (the LM
        # head's too), GQA 4 over 2; optionally a q/k LayerNorm shared by the heads.
        return PhiConfig(
            **TINY,
            hidden_size=64,
            intermediate_size=144,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=251,
            rope_parameters=_rope(0.5),
            qk_layernorm=qk,
        )

    return make


def _phi3() -> Any:
    from transformers import Phi3Config

    # Fused qkv_proj and gate_up_proj rows, a window of 8 inside the prompt, 3/4 of each head
    # rotated (Phi-4-mini's shape), GQA 6 over 2.
    return Phi3Config(
        **TINY,
        hidden_size=96,
        intermediate_size=128,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=317,
        sliding_window=8,
        rope_parameters=_rope(0.75),
        pad_token_id=0,
    )


def _phi3_longrope() -> Any:
    from transformers import Phi3Config

    # LongRoPE (Phi-3-mini-128k's scaling, its short factors up to 64 positions).
    rng = np.random.default_rng(3)
    return Phi3Config(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=251,
        max_position_embeddings=256,
        original_max_position_embeddings=64,
        rope_parameters={
            "rope_theta": 10000.0,
            "rope_type": "longrope",
            "short_factor": [float(x) for x in 1 + rng.random(8)],
            "long_factor": [float(x) for x in 4 + rng.random(8)],
            "original_max_position_embeddings": 64,
        },
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=None,
    )


def _gemma() -> Any:
    from transformers import GemmaConfig

    # (1 + w) RMSNorm, embeddings times sqrt(64), multi-query attention with head_dim 32 on a
    # 64-wide model of 4 heads, GELU-tanh, tied.
    return GemmaConfig(
        **TINY,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=251,
        pad_token_id=0,
    )


def _stablelm(variant: bool) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import StableLmConfig

        # A quarter of each head rotated, GQA 6 over 2; the variant: a parallel residual off
        # one norm, per-head q/k LayerNorms (one HF module per head) and q/k/v biases.
        return StableLmConfig(
            **TINY,
            hidden_size=96,
            intermediate_size=128,
            num_attention_heads=6,
            num_key_value_heads=2,
            vocab_size=317,
            rope_parameters=_rope(0.25),
            use_parallel_residual=variant,
            qk_layernorm=variant,
            use_qkv_bias=variant,
        )

    return make


def _starcoder2() -> Any:
    from transformers import Starcoder2Config

    # LayerNorm, biases everywhere, GELU MLP, GQA 4 over 2, a window of 8 inside the prompt.
    return Starcoder2Config(
        **TINY,
        hidden_size=64,
        intermediate_size=144,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=251,
        sliding_window=8,
    )


def _falcon(new: bool) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import FalconConfig

        # 7B shape: multi-query, a parallel block off one norm, [q; k; v] rows. 40B shape
        # (new_decoder_architecture): 6 heads in 2 KV groups, rows per group, ln_attn + ln_mlp.
        return FalconConfig(
            **TINY,
            hidden_size=96,
            ffn_hidden_size=160,
            num_attention_heads=6,
            num_kv_heads=2 if new else None,
            new_decoder_architecture=new,
            vocab_size=317,
        )

    return make


def _gpt_bigcode(mqa: bool) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import GPTBigCodeConfig

        # GPT-2's block with one KV head ([q; k; v] rows in a Linear c_attn), or rows per
        # head without multi-query; learned positions.
        return GPTBigCodeConfig(
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_inner=144,
            multi_query=mqa,
            vocab_size=251,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=None,
        )

    return make


def _cohere(qk: bool) -> Callable[[], Any]:
    def make() -> Any:
        from transformers import CohereConfig

        # A parallel block off one bias-free LayerNorm, interleaved rotary, logits times 0.5,
        # tied; optionally per-head q/k LayerNorms.
        return CohereConfig(
            **TINY,
            hidden_size=64,
            intermediate_size=96,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=317,
            logit_scale=0.5,
            use_qk_norm=qk,
            pad_token_id=0,
        )

    return make


def _olmo() -> Any:
    from transformers import OlmoConfig

    # LayerNorm without any parameters, q/k/v clamped to 0.4 (tight enough to clip).
    return OlmoConfig(
        **TINY,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=251,
        clip_qkv=0.4,
        pad_token_id=0,
    )


def _qwen2_window() -> Any:
    from transformers import Qwen2Config

    # use_sliding_window: the window (8) on the layers from max_window_layers (1) on only.
    return Qwen2Config(
        **TINY,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=251,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=1,
    )


def _exaone() -> Any:
    from transformers import LlamaConfig

    # EXAONE 3.x is remote code: the reference is the Llama it is made of, saved under
    # EXAONE's names and config keys (REMOTE below).
    return LlamaConfig(
        **TINY,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=317,
        tie_word_embeddings=False,
    )


def _as_exaone(folder: Path) -> None:
    """Rewrites a saved Llama checkpoint as EXAONE 3.x's remote-code checkpoint."""
    from safetensors.numpy import load_file, save_file

    cfg = json.loads((folder / "config.json").read_text())
    keys = {
        "num_hidden_layers": "num_layers",
        "rms_norm_eps": "layer_norm_epsilon",
        "hidden_act": "activation_function",
    }
    cfg = {keys.get(k, k): v for k, v in cfg.items()}
    cfg.update(architectures=["ExaoneForCausalLM"], model_type="exaone")
    (folder / "config.json").write_text(json.dumps(cfg))
    names = [
        ("model.embed_tokens.", "transformer.wte."),
        ("model.norm.", "transformer.ln_f."),
        ("model.layers.", "transformer.h."),
        (".input_layernorm.", ".ln_1."),
        (".post_attention_layernorm.", ".ln_2."),
        (".self_attn.o_proj.", ".attn.attention.out_proj."),
        (".self_attn.", ".attn.attention."),
        (".mlp.gate_proj.", ".mlp.c_fc_0."),
        (".mlp.up_proj.", ".mlp.c_fc_1."),
        (".mlp.down_proj.", ".mlp.c_proj."),
    ]
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    renamed = {}
    for name, t in tensors.items():
        for old, new in names:
            name = name.replace(old, new)
        renamed[name] = t
    save_file(renamed, str(path), metadata={"format": "pt"})


# -- the open models of 2025-26 (issue 17) ----------------------------------------------------

_PATTERN = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def _qwen3() -> Any:
    from transformers import Qwen3Config

    # Per-head q/k RMSNorm before RoPE, head_dim 24 on a 64-wide model of 4 heads, GQA.
    return Qwen3Config(
        **TINY,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        vocab_size=251,
    )


def _smollm3() -> Any:
    from transformers import SmolLM3Config

    # The third of four layers without rotary positions (no_rope_layers), GQA, tied.
    return SmolLM3Config(
        **{**TINY, "num_hidden_layers": 4},
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        no_rope_layers=[1, 1, 0, 1],
        vocab_size=317,
        pad_token_id=0,
    )


def _granite() -> Any:
    from transformers import GraniteConfig

    # Granite's four multipliers, none of them 1.
    return GraniteConfig(
        **TINY,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        embedding_multiplier=3.0,
        attention_multiplier=0.2,
        residual_multiplier=0.5,
        logits_scaling=2.0,
        vocab_size=251,
    )


def _gemma2() -> Any:
    from transformers import Gemma2Config

    # Norms before and after each branch, alternating windows of 8 (inside the prompt),
    # query_pre_attn_scalar 24 on head_dim 32, soft-capped scores (1.5) and logits (3).
    return Gemma2Config(
        **{**TINY, "num_hidden_layers": 4},
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        sliding_window=8,
        layer_types=_PATTERN,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=1.5,
        final_logit_softcapping=3.0,
        vocab_size=317,
        pad_token_id=0,
    )


def _gemma3() -> Any:
    from transformers import Gemma3TextConfig

    # Gemma 2's sandwich norms with per-head (1 + w) q/k norms; sliding layers rotate with
    # their own base (10^4), global ones with 10^6 and linear scaling by 4.
    return Gemma3TextConfig(
        **{**TINY, "num_hidden_layers": 4},
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=8,
        layer_types=_PATTERN,
        query_pre_attn_scalar=24,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
        },
        vocab_size=251,
        pad_token_id=0,
    )


def _cohere2() -> Any:
    from transformers import Cohere2Config

    # Cohere's parallel block; sliding layers (window 8) rotate, global ones have no positions.
    return Cohere2Config(
        **{**TINY, "num_hidden_layers": 4},
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        layer_types=_PATTERN,
        logit_scale=0.5,
        vocab_size=317,
        pad_token_id=0,
    )


def _exaone4() -> Any:
    from transformers import Exaone4Config

    # Norms after each branch only, per-head q/k RMSNorm, windows of 8 on alternate layers
    # whose global layers have no rotary positions.
    return Exaone4Config(
        **{**TINY, "num_hidden_layers": 4},
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        layer_types=_PATTERN,
        vocab_size=251,
    )


def _olmo2() -> Any:
    from transformers import Olmo2Config

    # Norms after each branch only; q and k RMS-normed over all their heads (6 q heads over
    # 2 KV heads: on 4 devices each KV head is on 2, and the ring counts it twice).
    return Olmo2Config(
        **TINY,
        hidden_size=96,
        intermediate_size=128,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=317,
        pad_token_id=0,
    )


def _phi4_mini() -> Any:
    from transformers import Phi3Config

    # Phi-4-mini's shape through Phi3ForCausalLM: 3/4 of each head rotated, LongRoPE, tied.
    rng = np.random.default_rng(4)
    return Phi3Config(
        **{**TINY, "max_position_embeddings": 512},
        hidden_size=96,
        intermediate_size=128,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=251,
        original_max_position_embeddings=64,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_theta": 10000.0,
            "rope_type": "longrope",
            "partial_rotary_factor": 0.75,
            "short_factor": [float(x) for x in 1 + rng.random(6)],
            "long_factor": [float(x) for x in 4 + rng.random(6)],
            "original_max_position_embeddings": 64,
        },
        pad_token_id=0,
    )


# -- mixtures of experts (issue 17) -----------------------------------------------------------


def _mixtral() -> Any:
    from transformers import MixtralConfig

    # 6 experts (not a power of two) 80 wide, 2 per token (always renormalized), GQA 6 over 2
    # with head_dim 24 on a 96-wide model, a window of 8 inside the prompt.
    return MixtralConfig(
        **TINY,
        hidden_size=96,
        intermediate_size=80,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=24,
        num_local_experts=6,
        num_experts_per_tok=2,
        sliding_window=8,
        vocab_size=317,
    )


def _qwen3_moe() -> Any:
    from transformers import Qwen3MoeConfig

    # Qwen3's per-head q/k norms, 3 of 6 experts per token renormalized (norm_topk_prob), a
    # dense intermediate_size no layer uses (every layer is a mixture), 3 layers, tied.
    return Qwen3MoeConfig(
        **{**TINY, "num_hidden_layers": 3},
        hidden_size=96,
        intermediate_size=200,
        moe_intermediate_size=80,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=24,
        num_experts=6,
        num_experts_per_tok=3,
        norm_topk_prob=True,
        vocab_size=251,
        tie_word_embeddings=True,
    )


def _olmoe() -> Any:
    from transformers import OlmoeConfig

    # q and k RMS-normed over all their heads in pre-norm blocks, then q, k, v clamped, 2 of 6
    # experts per token weighted by their plain softmax probabilities (norm_topk_prob false).
    return OlmoeConfig(
        **TINY,
        clip_qkv=1.5,
        hidden_size=96,
        intermediate_size=80,
        num_attention_heads=6,
        num_key_value_heads=2,
        num_experts=6,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        vocab_size=317,
        pad_token_id=0,
    )


# A mixture routes each token to its k best experts. Where the k-th and the (k+1)-th nearly
# tie, fp16 noise may pick the other one and change that position's output wholesale: a trait
# of the random test model, not an error of hyperdex. With seed 0 every mixture case had such
# ties over its ~150 routing decisions (leads of 0.004-0.01 against fp16 router noise of
# 0.004-0.006); these seeds route clear of them (test_routing_is_clear_of_fp16_noise).
CASE_SEEDS: Dict[str, int] = {"mixtral": 27, "qwen3_moe": 31, "olmoe": 36}
MOE_CASES = tuple(CASE_SEEDS)


# Cases whose checkpoint is rewritten after save_pretrained (remote-code architectures), and
# the architecture each then is (scripts/support_matrix.py reads it).
REMOTE: Dict[str, Callable[[Path], None]] = {"exaone": _as_exaone}
REMOTE_ARCHITECTURE = {"exaone": "ExaoneForCausalLM"}


# case name -> a tiny transformers config (2 layers). The model class is whatever
# transformers' AutoModelForCausalLM builds for it; the architecture is what save_pretrained
# records in config.json.
CASES: Dict[str, Callable[[], Any]] = {
    "gpt2": _gpt2,
    "opt": _opt,
    "llama": _llama,
    "llama_mqa": _llama_mqa,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen2_window": _qwen2_window,
    "gpt_neox": _gpt_neox(parallel=True),
    "gpt_neox_sequential": _gpt_neox(parallel=False),
    "gptj": _gptj,
    "phi": _phi(qk=False),
    "phi_qk_norm": _phi(qk=True),
    "phi3": _phi3,
    "phi3_longrope": _phi3_longrope,
    "gemma": _gemma,
    "stablelm": _stablelm(variant=False),
    "stablelm_parallel_qk_norm": _stablelm(variant=True),
    "starcoder2": _starcoder2,
    "falcon_7b": _falcon(new=False),
    "falcon_40b": _falcon(new=True),
    "gpt_bigcode": _gpt_bigcode(mqa=True),
    "gpt_bigcode_mha": _gpt_bigcode(mqa=False),
    "cohere": _cohere(qk=False),
    "cohere_qk_norm": _cohere(qk=True),
    "olmo": _olmo,
    "exaone": _exaone,
    "qwen3": _qwen3,
    "smollm3": _smollm3,
    "granite": _granite,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "cohere2": _cohere2,
    "exaone4": _exaone4,
    "phi4_mini": _phi4_mini,
    "olmo2": _olmo2,
    "mixtral": _mixtral,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
}

# -- tolerances ------------------------------------------------------------------------------

# The device keeps weights and activations in fp16 (fp32 accumulation), transformers runs in
# fp32. A row of logits (one position, the whole vocabulary) passes when every logit is
# within REL_TOL x the row's logit scale, the largest |transformers logit| in that row:
#     |ours - ref| <= 0.02 * max_v |ref[v]|
# fp16's relative rounding is 4.9e-4 per value; rounding every weight and activation through
# 2 layers leaves these models 0.14-0.44% of the scale away (7-22% of the allowance, the
# table at the top), so 2% leaves room for wider models, and real bugs are far outside it:
# transformers without Mistral's window is 84x the allowance away from its windowed logits,
# and test_accuracy.py's negative controls (a matrix 5% off, a dropped bias, RoPE scaling
# ignored, positions off by one) fail a bound of this size by 3.5-100x.
REL_TOL = 0.02
# Two logits of one row may swap order only if their reference gap is within the tolerance
# (near-ties); every other pair among the top-5 must keep transformers' order.
TOPK = 5
# A ring adds the devices' fp16 partial sums in another order than one MAC tree: the same
# rounding budget as fp16 vs fp32, against the 1-device logits.
RING_DEVICES = (2, 4)
# RTN W4A16, group 32 (the tiny rows are 64-160 wide; group 128 would be one scale per row).
# 4-bit rounding is coarse: a weight moves by up to step/2, step = max|w_group| / 7 (about
# 0.3 sigma for these Gaussian weights), ~8.5% relative noise per matrix-vector product, and
# the 7 quantized matrices of each layer (q, k, v, o, and the MLP's) compound it.
# transformers itself on RTN-rounded weights (a torch simulation of gpt2, llama and qwen2, not
# part of this file) moves their logits by 0.30-0.57 in relative L2 norm per row; the
# device's W4A16 runs move all six cases' by 0.22-0.53. The noise is the scheme's, not the
# device's (test_quantize.py checks a quantized device run against PyTorch on the dequantized
# weights, to fp16 tolerance). So this is a sanity bound: per row,
#     ||ours_w4a16 - ours_fp16||_2 <= 0.75 * ||ours_fp16||_2
# below 1, the error of a run that lost the signal (zero logits), and far below a run with
# wrong scales or codes (unrelated logits of the same spread: about 1.4; another size or sign:
# more).
QUANT_REL_L2 = 0.75
QUANT = "w4a16 rtn g32"
# 8-bit codes: 16x finer steps than 4-bit, so about 1/16 of its noise (the six first cases:
# 0.01-0.04 relative L2, under a fifth of this bound).
QUANT8_REL_L2 = 0.15
QUANT8 = "w8a16 rtn g32"

PROMPT_LEN = 20
NEW_TOKENS = 32
MAX_LENGTH = 64  # the compiled KV cache: prompt + 32 new tokens fit
WEIGHT_STD = 0.1  # helpers.randomize: logit scales (max |logit| per row) of 1.3-4.3
# Gemma stores a norm's gain as w in (1 + w): randomize's gains of 1 + N(0, 0.1) would be
# gains of 2, which for Gemma 3's q/k norms make attention so sharp that 4-bit noise flips it
# (0.92-0.96 of the W4A16 bound). Its gains are centred on 1 like every other model's.
OFFSET_NORMS = ("gemma",)
SEED = 0


def _quantization(quant: str) -> Any:
    from hyperdex.tools.quantization import QuantizationConfig

    return QuantizationConfig(bits=8 if quant == QUANT8 else 4, group_size=32, method="rtn")


# -- the cache -------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    folder: Path  # the saved HF checkpoint
    config: Dict[str, Any]  # its config.json
    hf: Any  # transformers model, fp32, eager attention
    ids: torch.Tensor  # [1, PROMPT_LEN]
    root: Path
    _paths: Dict[Tuple[int, Optional[str]], str] = field(default_factory=dict)
    _logits: Dict[Tuple[int, Optional[str]], np.ndarray] = field(default_factory=dict)
    _lms: Dict[Tuple[int, Optional[str]], Any] = field(default_factory=dict)
    _ref: Optional[np.ndarray] = None
    _greedy: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def vocab(self) -> int:
        return int(self.config["vocab_size"])

    def path(self, num_device: int = 1, quant: Optional[str] = None) -> str:
        """The compiled folder, compiled once per (device count, quantization)."""
        key = (num_device, quant)
        if key not in self._paths:
            kw = {"quantization": _quantization(quant)} if quant else {}
            tag = "" if quant is None else "-q8" if quant == QUANT8 else "-q"
            prefix = self.root / f"compiled-{num_device}{tag}"
            self._paths[key] = H.compile_model(
                self.folder, prefix, max_length=MAX_LENGTH, num_device=num_device, **kw
            )
        return self._paths[key]

    def lm(self, num_device: int = 1, quant: Optional[str] = None) -> Any:
        key = (num_device, quant)
        if key not in self._lms:
            self._lms[key] = H.load_lpu(self.path(num_device, quant), num_device)
        return self._lms[key]

    def logits(self, num_device: int = 1, quant: Optional[str] = None) -> np.ndarray:
        """Our logits of the prompt, [PROMPT_LEN, vocab]."""
        key = (num_device, quant)
        if key not in self._logits:
            out = self.lm(num_device, quant)(self.ids).logits
            self._logits[key] = np.asarray(out, dtype=np.float32)[0]
        return self._logits[key]

    def ref_of(self, ids: Any) -> np.ndarray:
        with torch.no_grad():
            return self.hf(torch.as_tensor(ids)).logits.numpy()[0]

    def greedy_ref(self, steps: int) -> np.ndarray:
        """transformers' greedy continuation, [1, PROMPT_LEN + steps]: the argmax of a full
        forward pass per step (no cache). transformers' own generate() can disagree with its
        forward: for Cohere 2 with a prompt past the window its sliding-window cache changes
        the first token's logits by 0.4 (transformers 5.25), so the model's definition is the
        forward pass."""
        key = f"greedy{steps}"
        if key not in self._greedy:
            seq = self.ids.clone()
            with torch.no_grad():
                for _ in range(steps):
                    logits = self.hf(seq, use_cache=False).logits[0, -1]
                    seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
            self._greedy[key] = seq.numpy()
        return self._greedy[key]

    def ref(self) -> np.ndarray:
        """transformers' fp32 logits of the prompt, [PROMPT_LEN, vocab]."""
        if self._ref is None:
            self._ref = self.ref_of(self.ids)
        return self._ref


def build_case(name: str, root: Path) -> Case:
    from transformers import AutoModelForCausalLM as HFAuto

    folder = root / "hf"
    config = CASES[name]()
    seed = CASE_SEEDS.get(name, SEED)
    torch.manual_seed(seed)
    hf = HFAuto.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    H.randomize(hf, seed, WEIGHT_STD)
    if str(getattr(config, "model_type", "")).startswith(OFFSET_NORMS):
        with torch.no_grad():
            for pname, param in hf.named_parameters():
                if H._is_norm(pname) and pname.endswith("weight"):
                    param -= 1.0
    hf.save_pretrained(str(folder))
    if name in REMOTE:
        REMOTE[name](folder)
    saved = json.loads((folder / "config.json").read_text())
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    ids = torch.tensor(rng.integers(0, saved["vocab_size"], (1, PROMPT_LEN)))
    return Case(name, folder, saved, hf, ids, root)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Case]:
    """zoo(name): the case, built once per module; its compiles are cached on it."""
    root = tmp_path_factory.mktemp("architectures")
    cache: Dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in cache:
            cache[name] = build_case(name, root / name)
        return cache[name]

    return get


# -- comparisons -----------------------------------------------------------------------------


def scale(ref: np.ndarray) -> np.ndarray:
    """The logit scale of each row: max |ref| over the vocabulary, [rows, 1]."""
    return np.max(np.abs(np.asarray(ref, np.float64)), axis=-1, keepdims=True)


def worst_fraction(ours: np.ndarray, ref: np.ndarray, rel: float) -> float:
    """max over the logits of |ours - ref| / (rel x its row's scale): <= 1 passes."""
    ours, ref = np.atleast_2d(ours), np.atleast_2d(ref)
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    return float(np.max(diff / (rel * scale(ref))))


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row: ||ours - ref||_2 / ||ref||_2."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)


def assert_rows_close(ours: np.ndarray, ref: np.ndarray, rel: float, what: str) -> None:
    ours, ref = np.atleast_2d(ours), np.atleast_2d(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape}, reference {ref.shape}"
    assert np.isfinite(ours).all(), f"{what}: non-finite logits"
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    bound = rel * scale(ref)
    r, v = np.unravel_index(np.argmax(diff / bound), diff.shape)
    assert (diff <= bound).all(), (
        f"{what}: |ours - ref| = {diff[r, v]:.4g} at row {r}, token {v} (ours {ours[r, v]:.5g}, "
        f"ref {ref[r, v]:.5g}) exceeds {rel} x the row's logit scale {bound[r, 0] / rel:.4g}; "
        f"worst |d| / allowance = {worst_fraction(ours, ref, rel):.3g}"
    )


def assert_top5(ours: np.ndarray, ref: np.ndarray, tol: float, what: str) -> None:
    """Our top-5 in order equals the reference's, except near-ties: for each of our top-5
    tokens, no token we rank below it may lead it in the reference by more than ``tol``
    (this covers the order inside the top-5 and its membership)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    order = np.argsort(-ours, kind="stable")
    for i in range(TOPK):
        a = order[i]
        below = order[i + 1 :]
        b = below[np.argmax(ref[below])]
        lead = ref[b] - ref[a]
        assert lead <= tol, (
            f"{what}: we rank token {a} at {i + 1} above token {b}, which transformers puts "
            f"{lead:.4g} higher (near-tie allowance {tol:.4g}); our top-5 "
            f"{[int(t) for t in order[:TOPK]]}, transformers' {H.topk(ref, TOPK)}"
        )


def hf_windows(hf: Any) -> list:
    """The sliding window transformers applies in each layer (0: none), from its config as
    its attention layers read it (``layer_types`` where the config has them)."""
    cfg = hf.config
    window = int(getattr(cfg, "sliding_window", None) or 0)
    if getattr(cfg, "use_sliding_window", True) is False:
        window = 0
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return [window if t == "sliding_attention" else 0 for t in types]
    return [window] * int(cfg.num_hidden_layers)


# -- 1. prompt logits and top-5 against transformers -----------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_prompt_logits_match_transformers(zoo: Callable[[str], Case], name: str) -> None:
    c = zoo(name)
    ours, ref = c.logits(), c.ref()
    assert ours.shape == (PROMPT_LEN, c.vocab)
    assert_rows_close(ours, ref, REL_TOL, f"{name} prompt logits")
    tol = REL_TOL * scale(ref)[:, 0]
    for row in range(PROMPT_LEN):
        assert_top5(ours[row], ref[row], tol[row], f"{name} position {row}")


@pytest.mark.parametrize("name", list(CASES))
def test_sliding_window_is_inside_the_prompt(zoo: Callable[[str], Case], name: str) -> None:
    """Where transformers slides a window, the prompt is longer than it, the window changes
    transformers' logits by far more than the tolerance (so check 1 would see it ignored),
    and the registry records it."""
    from hyperdex.arch.registry import model_traits

    c = zoo(name)
    windows = hf_windows(c.hf)
    record = model_traits(c.config)[2]
    assert list(record.layer_windows or [record.sliding_window] * len(windows)) == windows
    window = max(windows)
    if not window:
        return
    assert PROMPT_LEN > window
    # A window wider than the sequence: full attention, nothing else changed (the layer
    # types also pick rotary tables, so they stay).
    cfg = c.hf.config
    cfg.sliding_window = 10**6
    try:
        full = c.ref_of(c.ids)
    finally:
        cfg.sliding_window = window
    assert worst_fraction(full, c.ref(), REL_TOL) > 3, "the window does not change the logits"
    if name in MOE_CASES:
        # transformers runs the tokens routed to an expert as one matmul, whose float32
        # rounding depends on which tokens those are: the same up to that rounding.
        np.testing.assert_allclose(full[:window], c.ref()[:window], rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(full[:window], c.ref()[:window])


# Routing is decided clear of fp16 noise when each token's k-th expert leads the (k+1)-th by
# this many times the largest change of a router logit that fp16 makes.
ROUTE_MARGIN = 3.0


def router_logits(hf: Any, ids: Any) -> list:
    """transformers' router logits of every layer for ``ids``, each [positions, experts]."""
    out: list = []
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda m, i, o: out.append(o[0].float().numpy()))
        for layer in hf.model.layers
    ]
    try:
        with torch.no_grad():
            hf(torch.as_tensor(ids))
    finally:
        for h in hooks:
            h.remove()
    return out


@pytest.mark.parametrize("name", MOE_CASES)
def test_routing_is_clear_of_fp16_noise(zoo: Callable[[str], Case], name: str) -> None:
    """Over the prompt and transformers' greedy continuation, in every layer, each token's
    k-th expert leads the next by ROUTE_MARGIN x the largest change fp16 makes to a router
    logit (transformers run in fp16, as the device's activations are): hyperdex and
    transformers route every token alike, so checks 1-4 compare the same experts."""
    import copy

    c = zoo(name)
    k = int(c.hf.config.num_experts_per_tok)
    seq = c.greedy_ref(NEW_TOKENS)
    fp32 = router_logits(c.hf, seq)
    fp16 = router_logits(copy.deepcopy(c.hf).half(), seq)
    noise = max(float(np.max(np.abs(a - b))) for a, b in zip(fp32, fp16))
    for layer, logits in enumerate(fp32):
        ranked = -np.sort(-logits, axis=-1)
        lead = ranked[:, k - 1] - ranked[:, k]
        pos = int(np.argmin(lead))
        assert lead[pos] >= ROUTE_MARGIN * noise, (
            f"{name} layer {layer} position {pos}: expert {k} leads expert {k + 1} by "
            f"{lead[pos]:.4g}, within {ROUTE_MARGIN} x fp16's router noise {noise:.4g}"
        )


# -- 2. greedy tokens against transformers ---------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_greedy_tokens_match_transformers(zoo: Callable[[str], Case], name: str) -> None:
    c = zoo(name)
    # The mask a tokenizer gives: without one, a prompt token equal to pad_token_id would be
    # taken for padding (as transformers' generate infers it), unlike the reference's forward.
    mask = torch.ones_like(c.ids)
    ours = np.asarray(
        c.lm().generate(c.ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW_TOKENS)
    )
    assert_greedy_like_transformers(c, ours, name)


def assert_greedy_like_transformers(c: Case, ours: np.ndarray, what: str) -> None:
    """Our greedy continuation equals transformers', except from a step where transformers
    itself nearly ties (its top-2 gap within the fp16 tolerance)."""
    new = ours.shape[1] - PROMPT_LEN
    theirs = c.greedy_ref(new)
    assert ours.shape == theirs.shape == (1, PROMPT_LEN + new)
    np.testing.assert_array_equal(ours[0, :PROMPT_LEN], c.ids[0].numpy())
    differ = np.flatnonzero(ours[0] != theirs[0])
    if differ.size:
        k = int(differ[0])
        row = c.ref_of(theirs[:, :k])[-1]
        gap = float(H.topk_gaps(row, 1)[0])
        tol = REL_TOL * float(np.max(np.abs(row)))
        assert gap <= tol, (
            f"{what}: greedy token {k - PROMPT_LEN} is {ours[0, k]}, transformers' is "
            f"{theirs[0, k]}, whose lead over its runner-up is {gap:.4g}, more than the fp16 "
            f"tolerance {tol:.4g}"
        )


# -- 3. rings of devices against one device --------------------------------------------------


@pytest.mark.parametrize("devices", RING_DEVICES)
@pytest.mark.parametrize("name", list(CASES))
def test_ring_logits_match_one_device(zoo: Callable[[str], Case], name: str, devices: int) -> None:
    c = zoo(name)
    lm = c.lm(devices)
    assert lm._session.num_devices == devices
    assert_rows_close(c.logits(devices), c.logits(1), REL_TOL, f"{name} on {devices} devices")


# -- 4. RTN W4A16 ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_rtn_w4a16_runs_close_to_fp16(zoo: Callable[[str], Case], name: str) -> None:
    c = zoo(name)
    info = json.loads((Path(c.path(1, QUANT)) / "compile.json").read_text())
    assert info["quantization"]["scheme"] == "rtn-w4a16", info["quantization"]
    q, fp16 = c.logits(1, QUANT), c.logits()
    assert q.shape == fp16.shape and np.isfinite(q).all()
    assert not np.array_equal(q, fp16), "bit-identical to fp16: nothing was quantized"
    rel = rel_l2(q, fp16)
    row = int(np.argmax(rel))
    assert rel[row] <= QUANT_REL_L2, (
        f"{name} w4a16: position {row}'s logits are {rel[row]:.3g} of their norm away from the "
        f"fp16 model's (allowed {QUANT_REL_L2})"
    )


@pytest.mark.parametrize("name", list(CASES))
def test_rtn_w8a16_runs_closer_to_fp16(zoo: Callable[[str], Case], name: str) -> None:
    c = zoo(name)
    info = json.loads((Path(c.path(1, QUANT8)) / "compile.json").read_text())
    assert info["quantization"]["scheme"] == "rtn-w8a16", info["quantization"]
    q, fp16 = c.logits(1, QUANT8), c.logits()
    assert np.isfinite(q).all() and not np.array_equal(q, fp16)
    rel = rel_l2(q, fp16)
    assert rel.max() <= QUANT8_REL_L2, f"{name} w8a16: {rel.max():.3g} of the norm away"
    assert rel.max() < rel_l2(c.logits(1, QUANT), fp16).max(), "8 bits no closer than 4"


# -- 4b. hybrid: PyTorch prefills, the LPU decodes -------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_hybrid_decodes_like_the_lpu(zoo: Callable[[str], Case], name: str) -> None:
    """device_map={"gpu": 1, "lpu": 1}: transformers prefills (here on the CPU) and writes
    its KV cache into the device's, which then decodes: transformers' greedy tokens (near-ties
    aside). transformers 5 reads EXAONE 3.x's checkpoint as a Llama, so it prefills it too."""
    from hyperdex.transformers import AutoModelForCausalLM

    c = zoo(name)
    hybrid = AutoModelForCausalLM.from_pretrained(c.path(), device_map={"gpu": 1, "lpu": 1})
    assert hybrid.hybrid is not None
    mask = torch.ones_like(c.ids)  # as in test_greedy_tokens_match_transformers
    got = np.asarray(hybrid.generate(c.ids, attention_mask=mask, max_new_tokens=8, do_sample=False))
    assert_greedy_like_transformers(c, got, f"{name} hybrid")


# -- 4c. the variant's trait matters ----------------------------------------------------------


def _no_clip(hf: Any) -> Callable[[], None]:
    value, hf.config.clip_qkv = hf.config.clip_qkv, None
    return lambda: setattr(hf.config, "clip_qkv", value)


def _no_logit_scale(hf: Any) -> Callable[[], None]:
    value, hf.logit_scale = hf.logit_scale, 1.0
    return lambda: setattr(hf, "logit_scale", value)


def _no_final_softcap(hf: Any) -> Callable[[], None]:
    value, hf.config.final_logit_softcapping = hf.config.final_logit_softcapping, None
    return lambda: setattr(hf.config, "final_logit_softcapping", value)


def _no_attn_softcap(hf: Any) -> Callable[[], None]:
    attns = [layer.self_attn for layer in hf.model.layers]
    value = attns[0].attn_logit_softcapping
    for a in attns:
        a.attn_logit_softcapping = None
    return lambda: [setattr(a, "attn_logit_softcapping", value) for a in attns] and None


def _rope_everywhere(hf: Any) -> Callable[[], None]:
    attns = [layer.self_attn for layer in hf.model.layers]
    saved = [a.use_rope for a in attns]
    for a in attns:
        a.use_rope = 1
    return lambda: [setattr(a, "use_rope", u) for a, u in zip(attns, saved)] and None


def _plain_top_k(gate: Any) -> Callable[[Any], Any]:
    """Mixtral's router without its renormalization: the picks' plain softmax weights."""

    def forward(hidden: Any) -> Any:
        logits = torch.nn.functional.linear(hidden.reshape(-1, gate.hidden_dim), gate.weight)
        top, picks = torch.topk(torch.softmax(logits.float(), dim=-1), gate.top_k, dim=-1)
        return logits, top, picks

    return forward


def _flip_renormalize(hf: Any) -> Callable[[], None]:
    """The router's renormalization of the picks' weights, the other way round."""
    gates = [layer.mlp.gate for layer in hf.model.layers]
    for g in gates:
        if hasattr(g, "norm_topk_prob"):
            g.norm_topk_prob = not g.norm_topk_prob
        else:  # Mixtral always renormalizes
            g.forward = _plain_top_k(g)

    def undo() -> None:
        for g in gates:
            if hasattr(g, "norm_topk_prob"):
                g.norm_topk_prob = not g.norm_topk_prob
            else:
                del g.forward

    return undo


def _one_expert_fewer(hf: Any) -> Callable[[], None]:
    gates = [layer.mlp.gate for layer in hf.model.layers]
    for g in gates:
        g.top_k -= 1
    return lambda: [setattr(g, "top_k", g.top_k + 1) for g in gates] and None


# case -> switches the case's distinguishing trait off in transformers' model (returns undo):
# the trait must move the reference logits far past the tolerance, so check 1 would catch
# hyperdex ignoring it.
TRAIT_OFF: Dict[str, Callable[[Any], Callable[[], None]]] = {
    "olmo": _no_clip,
    "cohere": _no_logit_scale,
    "gemma2": _no_final_softcap,
    "gemma2-scores": _no_attn_softcap,
    "smollm3": _rope_everywhere,
    "mixtral": _flip_renormalize,
    "qwen3_moe": _flip_renormalize,
    "qwen3_moe-top_k": _one_expert_fewer,
    "olmoe": _flip_renormalize,
    "olmoe-clip": _no_clip,
}


@pytest.mark.parametrize("name", list(TRAIT_OFF))
def test_the_cases_trait_moves_the_logits(zoo: Callable[[str], Case], name: str) -> None:
    c = zoo(name.split("-")[0])
    undo = TRAIT_OFF[name](c.hf)
    try:
        off = c.ref_of(c.ids)
    finally:
        undo()
    assert worst_fraction(off, c.ref(), REL_TOL) > 3, f"{name}: the trait does not matter here"


# -- 5. the estimate from the config alone ---------------------------------------------------


# A mixture's expert tensor (hyperdex_model.bin name): blk.{i}.ffn_{gate,up,down}.{e}.weight.
EXPERT_TENSOR = re.compile(r"blk\.\d+\.ffn_(gate|up|down)\.\d+\.weight")


def streamed_weight_bytes(folder: Path, record: Any) -> int:
    """The weight bytes a decode step streams by the compiled memory plan: every matrix
    region, less the embedding tables (a row is gathered, not streamed) unless the head is
    tied to the token embedding (no output region: the head streams tok_embd); of a region of
    experts, only the share of the experts_per_token experts a token is routed to (the
    experts of a region are equally large)."""
    mm = json.loads((folder / "config" / "memory_map.json").read_text())
    mats = {r["name"]: r for r in mm["regions"] if r["kind"] == "Matrix"}
    gathered = {"pos_embd"} | ({"tok_embd"} if "output" in mats else set())
    total = 0
    for name, r in mats.items():
        if name in gathered:
            continue
        size = r["rows"] * r["cols"] * 2
        if r["sources"] and all(EXPERT_TENSOR.fullmatch(s) for s in r["sources"]):
            size = size * record.experts_per_token // record.num_experts
        total += size
    return total


@pytest.mark.parametrize("name", list(CASES))
def test_estimate_from_the_config_alone(zoo: Callable[[str], Case], name: str) -> None:
    from hyperdex import _core
    from hyperdex.arch.registry import model_traits
    from hyperdex.presets import device_preset
    from hyperdex.tools import estimate

    c = zoo(name)
    e = estimate(
        dict(c.config), prompt_len=PROMPT_LEN, new_tokens=NEW_TOKENS, max_length=MAX_LENGTH
    )
    assert e.architecture == c.config["architectures"][0]
    assert e.decode_ms_per_token > 0 and e.device_decode_ms_per_token > 0
    assert e.prefill_ms > 0 and e.time_to_first_token_ms > 0
    folder = Path(c.path())
    record = model_traits(c.config)[2]
    assert e.weight_bytes_per_token == streamed_weight_bytes(folder, record)
    mm = json.loads((folder / "config" / "memory_map.json").read_text())
    decode = _core.load_program(str(folder / "inst" / "decode.bin"))
    floors = _core.cost.floors(decode, device_preset(mm["device_preset"]))
    assert e.weight_bytes_per_token == floors.weight_bytes


# -- 6. the explorer reads the registry ------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_explorer_reads_the_registry(zoo: Callable[[str], Case], name: str) -> None:
    from hyperdex.arch.registry import model_traits
    from hyperdex.explore import load_model

    c = zoo(name)
    _, _, record = model_traits(c.config)
    inp = load_model(c.folder)
    assert inp.size == 1
    got = {k.split(".", 1)[1]: v[0] for k, v in inp.sweep.fields.items()}
    want = {
        "num_layers": record.num_layers,
        "d_model": record.hidden_size,
        "num_heads": record.num_heads,
        "num_kv_heads": record.num_kv_heads,
        "d_head": record.head_dim,
        "d_ff": record.intermediate_size,
        "vocab_size": record.vocab_size,
        "max_positions": record.max_position_embeddings,
        "norm": record.norm,
        "activation": record.act,
        "gated_mlp": record.gated_mlp,
        "positions": record.positions,
        "parallel_block": record.parallel_block,
    }
    assert {k: got[k] for k in want} == want
    # And the registry read the model transformers built: its sizes from the model itself (the
    # KV cache of a forward pass holds [batch, kv heads, positions, head_dim] per layer), not
    # from config keys each architecture names its own way.
    with torch.no_grad():
        out = c.hf(c.ids[:, :3], use_cache=True)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    keys = cache.layers[0].keys
    built = {
        "num_layers": len(cache.layers),
        "num_kv_heads": int(keys.shape[1]),
        "head_dim": int(keys.shape[3]),
        "vocab_size": int(out.logits.shape[-1]),
        "hidden_size": int(c.hf.config.hidden_size),
        "num_heads": int(c.hf.config.num_attention_heads),
    }
    assert {k: getattr(record, k) for k in built} == built
