"""Estimated decode time per token with each compiler pass off and on (docs/benchmarks.md).

The cost model (docs/cost-model.md) prices the decode program that ``compile()`` would make
from each model's config alone, on the packaged presets: all passes on, each pass off alone,
and all off. Prints a Markdown table (ms/token of device time, the decode program alone,
averaged over a 128-token prompt's next 128 tokens) and the LPU paper's two figures beside
the ``asic`` preset's estimates.

    python benchmarks/passes.py [--prompt-len 128] [--new-tokens 128]

Estimates, not measurements: no board is involved, and the result does not depend on the
machine that runs this.
"""

from __future__ import annotations

import argparse
from typing import Any

from hyperdex.tools import estimate
from hyperdex.tools.passes import PASSES


def opt(hidden: int, layers: int, heads: int, ffn: int) -> dict[str, Any]:
    return {
        "architectures": ["OPTForCausalLM"],
        "model_type": "opt",
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "ffn_dim": ffn,
        "word_embed_proj_dim": hidden,
        "do_layer_norm_before": True,
        "activation_function": "relu",
        "enable_bias": True,
        "tie_word_embeddings": True,
    }


def llama(hidden: int, ffn: int, layers: int, heads: int, kv: int, vocab: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "rope_theta": 500000.0,
        "tie_word_embeddings": vocab > 100000,
    }


# (label, config, preset, devices): the public models' shapes.
CASES = [
    ("OPT-1.3B", opt(2048, 24, 32, 8192), "u55c", 1),
    ("OPT-6.7B", opt(4096, 32, 32, 16384), "u55c", 1),
    ("Llama-3.2-1B", llama(2048, 8192, 16, 32, 8, 128256), "u55c", 1),
    ("Llama-3-8B", llama(4096, 14336, 32, 32, 8, 128256), "u55c", 2),
    ("OPT-1.3B", opt(2048, 24, 32, 8192), "asic", 1),
    ("Llama-3.2-1B", llama(2048, 8192, 16, 32, 8, 128256), "asic", 1),
    ("OPT-66B", opt(9216, 64, 72, 36864), "asic", 2),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    variants: list[tuple[str, Any]] = [("all passes on", None)]
    variants += [(f"without {name}", {name: False}) for name in PASSES]
    variants += [("all passes off", "none")]

    header = ["passes"] + [f"{label} {n}x{preset}" for label, _, preset, n in CASES]
    rows = []
    results: dict[tuple[str, int], Any] = {}
    for name, passes in variants:
        row = [name]
        for i, (_, config, preset, devices) in enumerate(CASES):
            e = estimate(
                config,
                num_device=devices,
                type_device=preset,
                prompt_len=args.prompt_len,
                new_tokens=args.new_tokens,
                passes=passes,
                keep_timeline=False,
            )
            results[(name, i)] = e
            base = results[("all passes on", i)].device_decode_ms_per_token
            ms = e.device_decode_ms_per_token
            row.append(
                f"{ms:.4f}" if passes is None else f"{ms:.4f} ({100 * (ms / base - 1):+.2f}%)"
            )
        rows.append(row)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(
        "| model | devices x preset | decode ms/token (end to end) | bandwidth used (program) "
        "| bandwidth used (end to end) | paper |"
    )
    print("|---|---|---|---|---|---|")
    paper = {"OPT-1.3B": "1.25 ms/token, 63%", "OPT-66B": "20.9 ms/token, up to 90%"}
    for i, (label, _, preset, devices) in enumerate(CASES):
        e = results[("all passes on", i)]
        end_to_end = e.bandwidth_utilization * e.device_decode_ms_per_token / e.decode_ms_per_token
        print(
            f"| {label} | {devices}x{preset} | {e.decode_ms_per_token:.3f} | "
            f"{100 * e.bandwidth_utilization:.1f}% | {100 * end_to_end:.1f}% | "
            f"{paper.get(label, '') if preset == 'asic' else ''} |"
        )
    print()
    print("| model | devices x preset | time to first token, chunked ring | unchunked |")
    print("|---|---|---|---|")
    for i, (label, _, preset, devices) in enumerate(CASES):
        if devices == 1:
            continue
        on = results[("all passes on", i)]
        off = results[("without chunk_ring", i)]
        print(
            f"| {label} | {devices}x{preset} | {on.time_to_first_token_ms:.1f} ms | "
            f"{off.time_to_first_token_ms:.1f} ms |"
        )
    print()
    print("Doubling the devices (the paper reports about 1.75x per doubling):")
    config = CASES[-1][1]
    times = {
        n: estimate(
            config,
            num_device=n,
            type_device="asic",
            prompt_len=args.prompt_len,
            new_tokens=args.new_tokens,
            keep_timeline=False,
        ).decode_ms_per_token
        for n in (2, 4, 8)
    }
    for n in (4, 8):
        print(f"- OPT-66B {n // 2} -> {n} asic devices: {times[n // 2] / times[n]:.2f}x")


if __name__ == "__main__":
    main()
