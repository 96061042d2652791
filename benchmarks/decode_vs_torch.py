"""Emulator speed against PyTorch on the same CPU, in one process run.

The model is SmolLM2-135M-Instruct (the README's real model). Both sides run batch 1 greedy
decoding of the same prompt: hyperdex's emulator executing the compiled LPU programs (fp16
weights and activations, fp32 accumulation), and transformers on PyTorch (fp32 and bf16, the
CPU peers a user would otherwise reach for). Prints a table with the ratios.

    python benchmarks/decode_vs_torch.py [--new-tokens 64] [--prompt-tokens 128] [--threads N]

This measures the emulator as a piece of software. How fast a board would be is the cost
model's business, not this script's.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HYPERDEX_PROGRESS", "0")

    import torch
    import transformers

    from hyperdex.tools import AutoCompiler
    from hyperdex.tools.real_weights import smollm2_hf_folder
    from hyperdex.transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    folder = smollm2_hf_folder()
    path = AutoCompiler().compile(
        model_id=str(folder), max_length=1024, fast_compile=True, progress=False
    )
    # Prefix caching off: every run prefills the whole prompt, as the peers do.
    ours = AutoModelForCausalLM.from_pretrained(
        path, num_threads=args.threads, enable_prefix_caching=False
    )
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 40000, size=(1, args.prompt_tokens), dtype=np.int64)
    new = args.new_tokens

    rows = []
    # Prefill time is a 1-token generate (the same path as generation: logits of the last row
    # only); decode time per token is the rest of a `new`-token generate, divided by new - 1.

    def ours_generate(n):
        return ours.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    t_first = timed(lambda: ours_generate(1))
    t_all = timed(lambda: ours_generate(new), repeat=2)
    ours_tokens = ours_generate(new)
    rows.append(("hyperdex emulator (fp16)", t_first, (t_all - t_first) / (new - 1)))

    for dtype in (torch.float32, torch.bfloat16):
        ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        tp = torch.from_numpy(prompt)

        def ref_generate(n, ref=ref, tp=tp):
            with torch.no_grad():
                return ref.generate(tp, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        t_p = timed(lambda: ref_generate(1))
        t_g = timed(lambda: ref_generate(new), repeat=2)
        same = ref_generate(new)[0].numpy().tolist() == ours_tokens[0].tolist()
        rows.append(
            (
                f"PyTorch {str(dtype).split('.')[-1]} (greedy tokens "
                f"{'equal' if same else 'differ'})",
                t_p,
                (t_g - t_p) / (new - 1),
            )
        )

    base_d = rows[0][2]
    print(
        f"SmolLM2-135M, prompt {args.prompt_tokens} tokens, {new} new tokens, "
        f"{args.threads} threads, {ours.device_description}"
    )
    print(
        f"{'engine':45} {'prefill ms':>11} {'decode ms/tok':>14} {'tok/s':>8} "
        f"{'decode vs hyperdex':>19}"
    )
    for name, p, d in rows:
        print(f"{name:45} {p * 1e3:11.1f} {d * 1e3:14.2f} {1 / d:8.1f} {d / base_d:18.2f}x")
    print("(decode vs hyperdex > 1: the peer is slower per token than the emulator)")


if __name__ == "__main__":
    main()
