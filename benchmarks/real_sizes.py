"""The cost model on real model sizes, from their config.json alone (no weights): decode
ms/token and prefill time of 2025-26 models on u55c rings of the size they need and on the
asic preset, fp16 and W4A16 (issue 17, point 4; docs/benchmarks.md has the tables).

    .venv/bin/python benchmarks/real_sizes.py

The configs are the published config.json fields that shape the model (sizes, heads, layer
pattern, RoPE, experts), written out here because nothing may be downloaded:
Qwen/Qwen3-8B, google/gemma-3-4b-it (its text model), meta-llama/Llama-3.1-8B for
comparison, mistralai/Mixtral-8x7B-v0.1 and Qwen/Qwen3-30B-A3B. Each mixture is set beside
a dense model of the same total size (the same layers with one MLP as wide as all experts
together), and a second table compares the two ways of splitting experts over a ring, both
priced by the cost model.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

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
MIXTRAL_8X7B: dict[str, Any] = {
    "architectures": ["MixtralForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-5,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
QWEN3_30B_A3B: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "tie_word_embeddings": False,
}
MOE_KEYS = (
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
)


def dense_twin(config: dict[str, Any], architecture: str) -> dict[str, Any]:
    """A dense model of the mixture's total size: its layers with one MLP as wide as all its
    experts together (so the same parameters, every one of them read per token)."""
    experts = int(config.get("num_local_experts") or config["num_experts"])
    width = int(config.get("moe_intermediate_size") or config["intermediate_size"])
    dense = {k: v for k, v in config.items() if k not in MOE_KEYS}
    return dict(dense, architectures=[architecture], intermediate_size=experts * width)


MODELS = {
    "Qwen3-8B": QWEN3_8B,
    "Gemma-3-4B (text)": GEMMA3_4B,
    "Llama-3.1-8B": LLAMA31_8B,
    "Mixtral-8x7B": MIXTRAL_8X7B,
    "dense 46.7B (Mixtral's size)": dense_twin(MIXTRAL_8X7B, "LlamaForCausalLM"),
    "Qwen3-30B-A3B": QWEN3_30B_A3B,
    "dense 30.5B (Qwen3-30B's size)": dense_twin(QWEN3_30B_A3B, "Qwen3ForCausalLM"),
}


def smallest_ring(config: dict[str, Any], device: str, quantization: Any) -> Any:
    """The estimate on the smallest power-of-two ring whose HBM holds the model."""
    for n in (1, 2, 4, 8, 16, 32):
        try:
            return run(config, n, device, quantization)
        except CapacityError:
            continue
    raise SystemExit(f"{device}: no ring of up to 32 devices holds the model")


def run(config: dict[str, Any], devices: int, device: str, quantization: Any = None) -> Any:
    return estimate(
        config,
        num_device=devices,
        type_device=device,
        quantization=quantization,
        prompt_len=PROMPT,
        new_tokens=NEW,
        max_length=2048,
        keep_timeline=False,
    )


def expected_busiest(experts: int, k: int, devices: int, trials: int = 200_000) -> float:
    """With whole experts spread over the ring (experts / devices each), the expected number of
    picked experts on the busiest device, for k distinct picks per token drawn uniformly
    (the load a balanced router aims at)."""
    rng = np.random.default_rng(0)
    picks = np.argsort(rng.random((trials, experts)), axis=1)[:, :k]
    owner = picks // (experts // devices)
    counts = np.stack([(owner == d).sum(axis=1) for d in range(devices)], axis=1)
    return float(counts.max(axis=1).mean())


def expert_split(config: dict[str, Any], device: str, devices: int) -> tuple[float, float]:
    """Decode ms/token of the experts' MATMULs when each device holds 1/N of every expert
    (what hyperdex builds: every device streams 1/N of the same k experts) and when each
    holds whole experts (the busiest device streams its picked experts whole while the
    others wait). Both from the cost model: the first on the N-device ring, the second from
    one device's per-pick time of a whole expert (a one-layer model on one device), times
    the expected load of the busiest device, per layer."""
    layers = int(config["num_hidden_layers"])
    experts = int(config.get("num_local_experts") or config["num_experts"])
    k = int(config["num_experts_per_tok"])

    def expert_us(e: Any) -> float:
        return sum(i.time_us for i in e.instructions if i.region.endswith("_exps"))

    tensor_parallel = expert_us(run(config, devices, device)) / 1000.0
    one_layer = dict(config, num_hidden_layers=1)
    whole = expert_us(run(one_layer, 1, device)) / k  # one whole expert, one pick
    whole_experts = layers * whole * expected_busiest(experts, k, devices) / 1000.0
    return tensor_parallel, whole_experts


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
    print()
    print("experts over a ring: decode ms/token of the expert MATMULs, fp16")
    print("| model | device | devices | 1/N of every expert | whole experts | ratio |")
    print("|---|---|---|---|---|---|")
    for name, config in (("Mixtral-8x7B", MIXTRAL_8X7B), ("Qwen3-30B-A3B", QWEN3_30B_A3B)):
        for device, devices in (("u55c", 8), ("u55c", 4), ("asic", 2)):
            try:
                tp, ep = expert_split(config, device, devices)
            except CapacityError:
                continue
            print(
                f"| {name} | {device} | {devices} | {tp:.2f} | {ep:.2f} | {ep / tp:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
