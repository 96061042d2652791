"""Time to first token with a shared prompt prefix, prefix cache on against off: measured on
the emulator and priced by the cost model.

SmolLM2-135M-Instruct (the README's real model), a 1,024-token shared prefix (real English
text) followed by a short question that differs per request. Three cases:

* **off**: ``enable_prefix_caching=False``; every request prefills prefix + question.
* **on, resident**: the device still holds the prefix from the previous request (the common
  case of one shared system prompt): the runtime truncates to it and prefills the question.
* **on, restored**: another prompt took the device in between, so the prefix's 32 KV blocks
  come back from the host pool (``Session.write_kv``) before the question is prefilled.

    python benchmarks/prefix_cache_ttft.py [--prefix-tokens 1024] [--repeat 3] [--threads N]

The cost model (``hyperdex.tools.estimate`` and its profiler) prices the same runs on a u55c:
off = prefill of prefix + question from position 0; on = prefill of the question at position
1024, plus, when restored, the host-to-HBM copy of the prefix's KV rows at ``--host-gbps``
(an assumption: PCIe Gen3 x16 DMA, ~12 GB/s of its 15.75 GB/s peak, is the U55C's host link).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import os
import statistics
import time

import numpy as np

QUESTIONS = [
    " Question: which line speaks of namespaces? Answer:",
    " Question: what is better than ugly? Answer:",
    " Question: how many lines are there? Answer:",
    " Question: what should errors never do? Answer:",
    " Question: what is better than complex? Answer:",
    " Question: is now better than never? Answer:",
]


def ttft(model, ids: list[int]) -> float:
    """Seconds from the call to the first new token (prefill + the first step)."""
    t = time.perf_counter()
    gen = model.generate_yield([ids], max_new_tokens=1, do_sample=False)
    next(gen)
    elapsed = time.perf_counter() - t
    gen.close()
    return elapsed


def cost_model_ms(path, prefix_len: int, suffix_len: int, host_gbps: float) -> dict[str, float]:
    """The cost model's TTFT for the three cases, in ms (empty when it is not available)."""
    import json

    from hyperdex import _core
    from hyperdex.presets import device_preset

    if not hasattr(_core, "cost"):
        return {}
    mm = json.loads((path / "config" / "memory_map.json").read_text())
    preset = device_preset(mm["device_preset"])
    prefill = _core.load_program(str(path / "inst" / "prefill.bin"))
    decode = _core.load_program(str(path / "inst" / "decode.bin"))

    def prefill_ms(start: int, n: int) -> float:
        prof = _core.cost.Profiler(prefill, decode, preset, 1)
        prof.prefill(start, n)
        return (prof.totals.prefill_ns + prof.totals.overhead_ns) / 1e6

    kv_row_bytes = sum(int(r["cols"]) * 2 for r in mm["regions"] if r["kind"] == "KvCache")
    kv_bytes = kv_row_bytes * prefix_len
    restore_ms = kv_bytes / (host_gbps * 1e9) * 1e3
    out = {
        "off": prefill_ms(0, prefix_len + suffix_len),
        "resident": prefill_ms(prefix_len, suffix_len),
        "restore_ms": restore_ms,
        "kv_bytes": float(kv_bytes),
    }
    out["restored"] = out["resident"] + restore_ms
    try:  # the estimator's own figure for the uncached prompt, when it is installed
        from hyperdex.tools import estimate

        out["estimate_off"] = estimate(
            str(path / "ckpt"), prompt_len=prefix_len + suffix_len, max_length=2048
        ).time_to_first_token_ms
    except Exception:
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--host-gbps", type=float, default=12.0)
    parser.add_argument(
        "--prefix", default="~/.cache/hyperdex/bench", help="where to compile (its own place)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HYPERDEX_PROGRESS", "0")

    from pathlib import Path

    from hyperdex.tools import AutoCompiler
    from hyperdex.tools.real_weights import smollm2_hf_folder
    from hyperdex.transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_hf_folder()
    path = Path(
        AutoCompiler().compile(
            model_id=str(folder),
            max_length=2048,
            prefix=args.prefix,
            fast_compile=True,
            progress=False,
        )
    )
    tok = AutoTokenizer.from_pretrained(path)
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    zen = codecs.decode(this.s, "rot13")
    text_ids: list[int] = []
    while len(text_ids) < args.prefix_tokens:
        text_ids += tok(zen + "\n\n").input_ids
    prefix = text_ids[: args.prefix_tokens]
    suffixes = [tok(q).input_ids for q in QUESTIONS]
    other = [int(t) for t in np.random.default_rng(0).integers(100, 40000, 64)]

    on = AutoModelForCausalLM.from_pretrained(path, num_threads=args.threads)
    off = AutoModelForCausalLM.from_pretrained(
        path, num_threads=args.threads, enable_prefix_caching=False
    )
    ttft(on, prefix + suffixes[-1])  # warm the cache: the prefix is computed once
    times: dict[str, list[float]] = {"off": [], "resident": [], "restored": []}
    for i in range(args.repeat):
        # the device holds the prefix with another question: only this question is prefilled
        ids = prefix + suffixes[(2 * i) % len(suffixes)]
        times["off"].append(ttft(off, ids))
        times["resident"].append(ttft(on, ids))
        ttft(on, other)  # another prompt takes the device: the prefix goes to the pool
        ids = prefix + suffixes[(2 * i + 1) % len(suffixes)]
        times["restored"].append(ttft(on, ids))
    # identical first tokens with the cache on and off
    check = prefix + suffixes[0]
    first_on = next(on.generate_yield([check], max_new_tokens=1, do_sample=False))
    first_off = next(off.generate_yield([check], max_new_tokens=1, do_sample=False))
    assert first_on == first_off, (first_on, first_off)
    stats = on.prefix_cache.stats

    est = cost_model_ms(path, args.prefix_tokens, len(suffixes[0]), args.host_gbps)
    print(
        f"SmolLM2-135M-Instruct, {args.prefix_tokens}-token shared prefix + "
        f"{len(suffixes[0])}-token question, {args.threads} emulator threads, "
        f"block {on.prefix_cache.block_size}, median of {args.repeat}"
    )
    print(f"{'case':<22}{'emulator TTFT (s)':>18}{'speedup':>9}{'cost model u55c (ms)':>22}")
    base = statistics.median(times["off"])
    for case in ("off", "resident", "restored"):
        t = statistics.median(times[case])
        model_ms = f"{est[case]:.3f}" if est else "n/a"
        label = {
            "off": "cache off",
            "resident": "cache on, resident",
            "restored": "cache on, restored",
        }
        print(f"{label[case]:<22}{t:>18.3f}{base / t:>8.1f}x{model_ms:>22}")
    if "estimate_off" in est:
        print(f"hyperdex.tools.estimate, cache off: {est['estimate_off']:.3f} ms")
    if est:
        print(
            f"restore: {est['kv_bytes'] / 1e6:.1f} MB of KV rows, {est['restore_ms']:.3f} ms at "
            f"{args.host_gbps} GB/s (assumed host link)"
        )
    print(
        f"pool: {stats.saved_blocks} blocks saved, {stats.restored_blocks} restored, "
        f"hit rate {stats.hit_rate:.2f}"
    )


if __name__ == "__main__":
    main()
