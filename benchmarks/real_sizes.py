"""The cost model on real model sizes, from their config.json alone (no weights): decode
ms/token and prefill time of 2025-26 models on u55c rings of the size they need and on the
asic preset, fp16 and W4A16 (issue 17, point 4; docs/benchmarks.md has the table).

    .venv/bin/python benchmarks/real_sizes.py

The configs are the published config.json fields that shape the model (sizes, heads, layer
pattern, RoPE), written out here because nothing may be downloaded: Qwen/Qwen3-8B,
google/gemma-3-4b-it (its text model), meta-llama/Llama-3.1-8B for comparison. Mixtures of
experts (Mixtral-8x7B, Qwen3-30B-A3B) are not built yet and so not in the table.
"""

from __future__ import annotations

import sys
from typing import Any

from hyperdex.errors import CapacityError
from hyperdex.tools import estimate

PROMPT, NEW = 512, 128

QWEN3_8B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
GEMMA3_4B: dict[str, Any] = {
    "architectures": ["Gemma3ForCausalLM"],
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "num_hidden_layers": 34,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "vocab_size": 262208,
    "max_position_embeddings": 131072,
    "query_pre_attn_scalar": 256,
    "sliding_window": 1024,
    "layer_types": [
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(34)
    ],
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
}
LLAMA31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
MODELS = {"Qwen3-8B": QWEN3_8B, "Gemma-3-4B (text)": GEMMA3_4B, "Llama-3.1-8B": LLAMA31_8B}


def smallest_ring(config: dict[str, Any], device: str, quantization: Any) -> Any:
    """The estimate on the smallest power-of-two ring whose HBM holds the model."""
    for n in (1, 2, 4, 8, 16):
        try:
            return estimate(
                config,
                num_device=n,
                type_device=device,
                quantization=quantization,
                prompt_len=PROMPT,
                new_tokens=NEW,
                max_length=2048,
                keep_timeline=False,
            )
        except CapacityError:
            continue
    raise SystemExit(f"{device}: no ring of up to 16 devices holds the model")


def main() -> int:
    print(
        f"prompt {PROMPT} tokens, {NEW} new tokens, max_length 2048; ms/token is the decode "
        "average, device time plus the preset's per-run overhead"
    )
    print(
        f"| {'model':18s} | weights | device | devices | decode ms/token | tokens/s | "
        "prefill ms | bandwidth floor ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, config in MODELS.items():
        for quant in (None, "rtn-w4a16"):
            for device in ("u55c", "asic"):
                e = smallest_ring(config, device, quant)
                print(
                    f"| {name:18s} | {quant or 'fp16'} | {device} | {e.num_device} | "
                    f"{e.decode_ms_per_token:.2f} | {e.tokens_per_s:.1f} | {e.prefill_ms:.1f} | "
                    f"{e.bandwidth_floor_ms:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
