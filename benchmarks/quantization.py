"""Weight quantization of SmolLM2-135M: perplexity and quantization time of fp16, RTN and GPTQ
(ours) against peer GPTQ implementations (GPTQModel, llmcompressor) on the same samples.

    python benchmarks/quantization.py [--group-size 128] [--nsamples 16] [--seqlen 256]
        [--eval-tokens 2048] [--torch-tokens 16384] [--ppl-seqlen 512] [--threads N]
        [--schemes fp16,rtn-w4,gptq-w4,gptq-w8,gptq-w4-plain] [--peers gptqmodel]
        [--peer-schemes gptq-w4,gptq-w4-plain]
    python benchmarks/quantization.py --setup-peers     # once: the peers' venvs (PyPI)

Rows: hyperdex's ``compile(quantization=...)`` with fp16 weights, RTN 4-bit, and GPTQ 4-bit and
8-bit as the named schemes run it (``"w4a16"``/``"w8a16"``: act-order over static groups and
the mse scale search, ``hyperdex.tools.quantization.GPTQ_PRESET``), plus ``gptq-w4-plain``
(transformers' GPTQConfig defaults: columns in order, scales from each group's largest weight
as GPTQ reaches it); all symmetric, ``--group-size`` input features per scale, damping 0.01,
LM head fp16. Then each peer with the same settings as the row of the same name, on the same
calibration samples: ``hyperdex.data.calibration_samples`` (``--nsamples`` windows of
``--seqlen`` tokens of the shipped calibration text, seed 0), handed to every quantizer as
token ids. The table prints each scheme's settings.

The peers, each in its own virtual environment (their pins clash with hyperdex's and with
each other's):

* ``gptqmodel`` (the default peer): GPTQModel 6.0.3, the successor of AutoGPTQ and the GPTQ
  backend of transformers' ``GPTQConfig``, run with ``desc_act``, ``static_groups``, ``mse``
  and ``damp_percent`` as ours and ``act_group_aware=False`` (its own default would turn on
  its group-aware reordering; ours has it too, ``--schemes`` cannot ask for it here). Its mse
  search tries 80 shrink steps (down to 0.21 x absmax) where ours tries 20 (down to 0.81).
  Its GPTQ checkpoint is compiled by hyperdex as it is (``compile(..., quantization=None)``:
  the GPTQ import).
* ``llmcompressor``: llmcompressor 0.14.0.1 (``GPTQModifier``), only for the ``-plain``
  schemes. It fixes every group's scale from the unquantized weights before GPTQ runs (its
  observer), i.e. ``static_groups=True``; compare it with ``--schemes gptq-w4-static``. Its
  fake-quantized weights are saved in fp16 and compiled as an fp16 model.

``--setup-peers`` creates ``/tmp/peer-gptqmodel`` and ``/tmp/peer-llmcompressor`` with pip (PyPI
only; torch pinned to the local CPU build by constraints.txt); ``HYPERDEX_PEER_GPTQMODEL_PYTHON``
/ ``HYPERDEX_PEER_LLMCOMPRESSOR_PYTHON`` point at other interpreters. A peer whose interpreter
is missing is skipped, and the script says why.

Perplexity, on the shipped evaluation text (``hyperdex.data.evaluation_text()``, *Alice's
Adventures in Wonderland*, 37,209 SmolLM2 tokens, which shares no text with the calibration
set), in non-overlapping windows of ``--ppl-seqlen`` tokens (``hyperdex.data.perplexity``):

* the device: the hyperdex emulator's logits (``AutoModelForCausalLM.from_pretrained(compiled)``,
  fp16 activations, fp32 accumulation) over the first ``--eval-tokens`` tokens;
* PyTorch fp32 over the first ``--torch-tokens`` tokens (-1: all) on the same effective weights
  (each compiled model's ``hyperdex_model.bin``: fp16 tensors, or codes and fp16 scales
  dequantized exactly as the device does, ``w' = fp16((q - 2^(b-1)) * scale)``). It is several
  times faster than the emulator, so it covers more of the book; the "RTN gap" column (the
  share of RTN's perplexity gap to fp16 that GPTQ closes) uses it when it is there.

Quantize time: ours is compile()'s "quantize" phase (calibration on the emulator + GPTQ +
writing the quantized model), the whole compile in brackets; a peer's is its quantize call
(``GPTQModel.quantize`` with its packing, ``oneshot``), its model load in brackets.

The defaults take about 20 minutes on this project's 2-core machines: 16 x 256 calibration
tokens (GPTQ papers use 128 x 2048), 2,048 tokens on the emulator (~5 s per window of 512)
and 16,384 in PyTorch (~2 s per window). Results are in docs/benchmarks.md.

Group size: SmolLM2-135M's hidden size is 576 = 4.5 x 128, so with the usual group of 128 the
last group of q/k/v/o/gate/up is 64 inputs wide. hyperdex and GPTQModel quantize such a
shorter last group as GPTQ does; llmcompressor refuses it, so its rows are skipped then (use
``--group-size 64``, which divides every layer: 576 = 9 x 64, 1536 = 24 x 64).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

SCHEMES = ("fp16", "rtn-w4", "gptq-w4", "gptq-w8", "gptq-w4-plain")
# Also accepted by --schemes: GPTQ with transformers' GPTQConfig defaults ("-plain": desc_act
# off, scales from each group's largest weight as GPTQ reaches it), the same with static
# groups (what llmcompressor does), and RTN 8-bit.
EXTRA_SCHEMES = ("rtn-w8", "gptq-w8-plain", "gptq-w4-static", "gptq-w8-static")
PEER_SCHEMES = ("gptq-w4", "gptq-w4-plain")
EXTRA_PEER_SCHEMES = ("gptq-w8", "gptq-w8-plain")
# GPTQ settings per scheme suffix; "" is hyperdex's own preset ("w4a16" / "w8a16").
PLAIN = {"desc_act": False, "static_groups": False, "mse": 0.0}
VARIANTS: Dict[str, Optional[Dict[str, Any]]] = {
    "": None,
    "-plain": PLAIN,
    "-static": dict(PLAIN, static_groups=True),
}


def gptq_settings(scheme: str) -> Dict[str, Any]:
    """desc_act, static_groups, mse and damp_percent of a GPTQ scheme (``gptq-w4-plain``)."""
    from hyperdex.tools.quantization import resolve_quantization

    bits = scheme.split("-w")[1][0]
    preset = resolve_quantization(f"w{bits}a16")
    settings = {k: getattr(preset, k) for k in ("desc_act", "static_groups", "mse")}
    settings.update(VARIANTS[scheme[len(f"gptq-w{bits}") :]] or {})
    settings["damp_percent"] = preset.damp_percent
    return settings


def describe(settings: Dict[str, Any]) -> str:
    act = "desc_act + static groups" if settings["desc_act"] else "desc_act off"
    if settings["static_groups"] and not settings["desc_act"]:
        act += ", static groups"
    mse = f", mse {settings['mse']:g}" if settings["mse"] else ""
    return f"{act}{mse}, damp {settings['damp_percent']:g}"


REPO = Path(__file__).resolve().parent.parent

PYTORCH_PIP = ["torch==2.13.0"]  # the CPU build constraints.txt pins
PEERS: Dict[str, Dict[str, Any]] = {
    "gptqmodel": {
        "venv": "/tmp/peer-gptqmodel",
        # 6.0.3 is the newest that accepts torch 2.13 (7.x needs torch>=2.14.1, a CUDA build
        # on PyPI); it needs transformers 5.4 (5.23 lacks transformers.utils.hub.create_repo)
        # and kernels 0.12 (0.17 breaks transformers 5.4 at import); BUILD_CUDA_EXT=0 builds
        # its sdist without nvcc / nvidia-smi; it imports requests without declaring it.
        "pip": ["gptqmodel==6.0.3", "transformers==5.4.0", "kernels==0.12.2", "requests"],
        "env": {"BUILD_CUDA_EXT": "0"},
        "probe": "import gptqmodel",
        "versions": ("gptqmodel", "transformers", "torch"),
    },
    "llmcompressor": {
        "venv": "/tmp/peer-llmcompressor",
        "pip": ["llmcompressor==0.14.0.1"],  # pins transformers<=5.17
        "env": {},
        "probe": "import llmcompressor, datasets, compressed_tensors",
        "versions": ("llmcompressor", "compressed-tensors", "transformers", "torch"),
    },
}

# Run by a peer's interpreter: argv[1] = request.json. Writes <out>/ and <out>/peer.json.
PEER_COMMON = r"""
import importlib.metadata, json, os, shutil, sys, time
req = json.load(open(sys.argv[1]))
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(req["threads"])
samples, g, out = req["samples"], req["group_size"], req["out"]

def finish(t0, t1, t2, versions):
    info = {"load_s": t1 - t0, "quantize_s": t2 - t1,
            "versions": {p: importlib.metadata.version(p) for p in versions}}
    json.dump(info, open(os.path.join(out, "peer.json"), "w"))
"""

PEER_GPTQMODEL = (
    PEER_COMMON
    + r"""
from gptqmodel import GPTQModel, QuantizeConfig
config = QuantizeConfig(bits=req["bits"], group_size=g, sym=True, desc_act=req["desc_act"],
                        static_groups=req["static_groups"], act_group_aware=False,
                        damp_percent=req["damp"], mse=req["mse"])
t0 = time.perf_counter()
model = GPTQModel.load(req["folder"], config, device="cpu")
t1 = time.perf_counter()
model.quantize([{"input_ids": s, "attention_mask": [1] * len(s)} for s in samples],
               batch_size=1)
t2 = time.perf_counter()
model.save(out)
finish(t0, t1, t2, req["versions"])
"""
)

PEER_LLMCOMPRESSOR = (
    PEER_COMMON
    + r"""
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(req["folder"], dtype=torch.float32)
weights = QuantizationArgs(num_bits=req["bits"], type="int", symmetric=True,
                           strategy="group" if g > 0 else "channel",
                           group_size=g if g > 0 else None)
recipe = GPTQModifier(config_groups={"g0": QuantizationScheme(targets=["Linear"],
                                                              weights=weights)},
                      ignore=["lm_head"], actorder=None, dampening_frac=req["damp"],
                      block_size=128)
dataset = Dataset.from_dict({"input_ids": samples,
                             "attention_mask": [[1] * len(s) for s in samples]})
t1 = time.perf_counter()
oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(samples),
        max_seq_length=max(len(s) for s in samples), shuffle_calibration_samples=False,
        pipeline="sequential")
t2 = time.perf_counter()
# The fake-quantized weights as a plain fp16 checkpoint (no quantization parameters).
tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
           if k.endswith(".weight") or k.endswith(".bias")}
if getattr(model.config, "tie_word_embeddings", False):
    tensors.pop("lm_head.weight", None)
os.makedirs(out, exist_ok=True)
save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
for name in os.listdir(req["folder"]):
    if name.startswith("tokenizer") or name in ("generation_config.json", "chat_template.jinja",
                                                "special_tokens_map.json"):
        shutil.copy(os.path.join(req["folder"], name), out)
config = json.load(open(os.path.join(req["folder"], "config.json")))
config.pop("quantization_config", None)
config["torch_dtype"] = "float16"
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
finish(t0, t1, t2, req["versions"])
"""
)

PEER_SCRIPTS = {"gptqmodel": PEER_GPTQMODEL, "llmcompressor": PEER_LLMCOMPRESSOR}

# Canonical hyperdex tensor names (hyperdex/arch/registry.py) -> Hugging Face Llama names.
_LAYER = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL = {"tok_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# --------------------------------------------------------------------------------------------
# Weights


def state_dict_of_compiled(path: Path) -> Dict[str, np.ndarray]:
    """The effective weights of a compiled model, as fp32 arrays with Hugging Face names:
    fp16 tensors as stored; quantized ones (``ckpt/quantized/``: u8 codes + fp16 scales)
    dequantized exactly as the device does."""
    from hyperdex.formats.model_file import ModelFile

    ckpt = path / "ckpt"
    if (ckpt / "quantized" / "hyperdex_model.bin").is_file():  # the quantized conversion
        ckpt = ckpt / "quantized"
    record = json.loads((ckpt / "hyperdex_config.json").read_text()).get("quantization")
    out: Dict[str, np.ndarray] = {}
    with ModelFile.open(ckpt / "hyperdex_model.bin", verify=False) as model_file:
        names = list(model_file.names)
        for name in names:
            if name.endswith(".scales"):
                continue
            array = np.asarray(model_file[name])
            scales_name = name[: -len(".weight")] + ".scales"
            if scales_name in names:
                if not record:
                    raise RuntimeError(f"{path}: {scales_name} but no quantization record")
                codes = array.astype(np.float32) - float(2 ** (int(record["bits"]) - 1))
                scales = np.asarray(model_file[scales_name]).astype(np.float32)
                cols = codes.shape[1]
                group = int(record["group_size"])
                group = cols if group == -1 else group  # the last group may be shorter
                per_column = np.repeat(scales, group, axis=1)[:, :cols]
                array = (codes * per_column).astype(np.float16)
            elif array.dtype not in (np.float16, np.float32):
                raise RuntimeError(f"{path}: {name} is {array.dtype} without scales")
            out[hf_name(name)] = array.astype(np.float32)
    return out


def hf_name(name: str) -> str:
    stem, _, suffix = name.rpartition(".")
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match and match.group(2) in _LAYER:
        return f"model.layers.{match.group(1)}.{_LAYER[match.group(2)]}.{suffix}"
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{suffix}"
    raise RuntimeError(f"no Hugging Face Llama name for {name} (this benchmark is Llama-only)")


def torch_model(folder: Path, state: Optional[Dict[str, np.ndarray]] = None) -> Any:
    """LlamaForCausalLM in fp32 from ``folder``'s config, with ``state`` (else its weights),
    every weight rounded to fp16 first (what the device stores)."""
    import torch
    import transformers

    if state is None:
        from safetensors.numpy import load_file

        state = {
            k: v.astype(np.float32) for k, v in load_file(folder / "model.safetensors").items()
        }
    config = transformers.AutoConfig.from_pretrained(str(folder))
    if getattr(config, "quantization_config", None) is not None:  # e.g. a GPTQ checkpoint
        del config.quantization_config  # the weights given are already dequantized
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = {
        k: torch.from_numpy(v.astype(np.float16).astype(np.float32)) for k, v in state.items()
    }
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not fit the model: missing {missing}, extra {unexpected}")
    model.tie_weights()
    return model.eval()


# --------------------------------------------------------------------------------------------
# Perplexity


def ppl_torch(model: Any, ids: List[int], seqlen: int) -> float:
    import torch

    from hyperdex.data.perplexity import perplexity

    def logits(window: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(window)[None]).logits[0].numpy()

    return perplexity(logits, ids, seqlen)


def ppl_emulator(path: Path, ids: List[int], seqlen: int, threads: int) -> float:
    from hyperdex.data.perplexity import perplexity
    from hyperdex.transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, num_threads=threads, enable_prefix_caching=False
    )
    return perplexity(lambda window: model(window[None]).logits[0], ids, seqlen)


# --------------------------------------------------------------------------------------------
# The peers


def peer_python(name: str) -> Tuple[Optional[str], str]:
    """(interpreter, '') or (None, why not)."""
    peer = PEERS[name]
    env_name = f"HYPERDEX_PEER_{name.upper()}_PYTHON"
    python = os.environ.get(env_name) or str(Path(peer["venv"]) / "bin" / "python")
    if not Path(python).exists():
        return None, (
            f"{python} does not exist; run `python benchmarks/quantization.py --setup-peers` "
            f"once (or set {env_name})"
        )
    probe = subprocess.run([python, "-c", peer["probe"]], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"{python} cannot `{peer['probe']}`: {last}"
    return python, ""


def setup_peers(names: List[str]) -> None:
    """Create each peer's venv and pip-install it (PyPI), torch pinned by constraints.txt."""
    constraints = str(REPO / "constraints.txt")
    for name in names:
        peer = PEERS[name]
        venv = Path(peer["venv"])
        print(f"setting up {name} in {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-c", constraints]
        subprocess.run(pip + PYTORCH_PIP, check=True)
        subprocess.run(pip + peer["pip"], check=True, env=dict(os.environ, **peer["env"]))
        python, why = peer_python(name)
        print(f"  {name}: " + ("ready" if python else f"NOT usable: {why}"), flush=True)


def run_peer(
    name: str,
    python: str,
    folder: Path,
    samples: List[List[int]],
    bits: int,
    group: int,
    threads: int,
    out: Path,
    settings: Dict[str, Any],
) -> Dict[str, Any]:
    work = out.parent / f"{out.name}-run"
    work.mkdir(parents=True, exist_ok=True)
    request = {
        "folder": str(folder),
        "samples": samples,
        "bits": bits,
        "group_size": group,
        "damp": settings["damp_percent"],
        "desc_act": settings["desc_act"],
        "static_groups": settings["static_groups"],
        "mse": settings["mse"],
        "threads": threads,
        "out": str(out),
        "versions": list(PEERS[name]["versions"]),
    }
    (work / "peer.py").write_text(PEER_SCRIPTS[name])
    (work / "request.json").write_text(json.dumps(request))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    log = work / "peer.log"
    with open(log, "w") as handle:  # cwd=work: GPTQModel offloads layers to ./gptqmodel_offload
        done = subprocess.run(
            [python, "peer.py", "request.json"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{name} failed (exit {done.returncode}; {log}): " + " | ".join(tail))
    return json.loads((out / "peer.json").read_text())


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--schemes", default=",".join(SCHEMES), help="ours, comma-separated from %(default)s"
    )
    parser.add_argument(
        "--peers",
        default=None,
        help="comma-separated from gptqmodel,llmcompressor (default: gptqmodel; both with "
        "--setup-peers)",
    )
    parser.add_argument(
        "--peer-schemes",
        default=",".join(PEER_SCHEMES),
        help=f"from %(default)s,{','.join(EXTRA_PEER_SCHEMES)}",
    )
    parser.add_argument("--setup-peers", action="store_true", help="create the peers' venvs")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--group-size", type=int, default=128, help="-1: one scale per row")
    parser.add_argument("--nsamples", type=int, default=16, help="calibration samples")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per calibration sample")
    parser.add_argument("--ppl-seqlen", type=int, default=512, help="perplexity window")
    parser.add_argument(
        "--eval-tokens", type=int, default=2048, help="evaluation tokens (0: all, ~37k)"
    )
    parser.add_argument(
        "--torch-tokens",
        type=int,
        default=16384,
        help="PyTorch fp32 perplexity tokens (0: none; -1: all, ~37k)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", default=None, help="keep the compiled models here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HYPERDEX_PROGRESS", "0")
    schemes = [s for s in args.schemes.split(",") if s]
    default_peers = ",".join(PEERS) if args.setup_peers else "gptqmodel"
    peers = [] if args.no_peer else [s for s in (args.peers or default_peers).split(",") if s]
    peer_schemes = [s for s in args.peer_schemes.split(",") if s]
    ours = SCHEMES + EXTRA_SCHEMES
    unknown = (
        sorted(set(schemes) - set(ours))
        + sorted(set(peers) - set(PEERS))
        + sorted(set(peer_schemes) - set(PEER_SCHEMES + EXTRA_PEER_SCHEMES))
    )
    if unknown:
        parser.error(
            f"unknown {unknown}; choose from {ours}, {list(PEERS)}, "
            f"{PEER_SCHEMES + EXTRA_PEER_SCHEMES}"
        )
    if args.setup_peers:
        setup_peers(peers)
        return

    import torch
    import transformers

    from hyperdex import data
    from hyperdex.tools import AutoCompiler
    from hyperdex.tools.real_weights import smollm2_hf_folder

    try:
        from hyperdex.tools import QuantizationConfig
    except ImportError:  # not re-exported yet
        from hyperdex.tools.quantization import QuantizationConfig

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    folder = smollm2_hf_folder()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    hf_config = json.loads((folder / "config.json").read_text())
    samples = data.calibration_samples(tok, args.nsamples, args.seqlen, seed=0)
    eval_all = data.tokenize(tok, data.evaluation_text())
    eval_ids = eval_all[: args.eval_tokens] if args.eval_tokens else eval_all
    torch_ids = eval_all if args.torch_tokens < 0 else eval_all[: args.torch_tokens]
    g = args.group_size
    tag = f"g{g}" if g > 0 else ""  # -1: one scale per output row

    def with_group(scheme: str) -> str:  # gptq-w4-plain -> gptq-w4g128-plain
        head, _, rest = scheme.partition("-w")
        return f"{head}-w{rest[0]}{tag}{rest[1:]}"

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hdx-quant-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    compiler = AutoCompiler()
    max_length = max(args.ppl_seqlen, args.seqlen)

    def config_for(scheme: str) -> Any:
        if scheme == "fp16":
            return None
        method, rest = scheme.split("-w")
        extra = gptq_settings(scheme) if method == "gptq" else {}
        return QuantizationConfig(
            bits=int(rest[0]),
            group_size=g,
            method=method,
            dataset=samples,
            nsamples=len(samples),
            seqlen=args.seqlen,
            **extra,
        )

    rows: List[Dict[str, Any]] = []

    def evaluate(row: Dict[str, Any], compiled: Path, weights: Callable[[], Any]) -> None:
        t = time.perf_counter()
        row["ppl"] = ppl_emulator(compiled, eval_ids, args.ppl_seqlen, args.threads)
        said = f"  {row['name']}: ppl {row['ppl']:.3f} ({time.perf_counter() - t:.0f} s)"
        if len(torch_ids) >= args.ppl_seqlen:
            row["ppl_torch"] = ppl_torch(weights(), torch_ids, args.ppl_seqlen)
            said += f", PyTorch fp32 {row['ppl_torch']:.3f}"
        print(said, flush=True)

    def compiled_weights(path: Path) -> Callable[[], Any]:
        return lambda: torch_model(path / "ckpt", state_dict_of_compiled(path))

    for scheme in schemes:
        name = "fp16" if scheme == "fp16" else f"hyperdex {with_group(scheme)}"
        print(f"compiling {name} ...", flush=True)
        row: Dict[str, Any] = {"name": name, "scheme": scheme}
        try:
            t = time.perf_counter()
            path = Path(
                compiler.compile(
                    model_id=str(folder),
                    max_length=max_length,
                    prefix=work / scheme,
                    quantization=config_for(scheme),
                    progress=False,
                )
            )
            row["total_s"] = time.perf_counter() - t
            row["quantize_s"] = compiler.last_timings.get("quantize")
            evaluate(row, path, compiled_weights(path))
        except Exception as e:  # report and go on: the table says what failed
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"  {name}: FAILED: {row['error']}", flush=True)
        rows.append(row)

    notes: List[str] = []
    for peer in peers:
        python, why = peer_python(peer)
        inputs = {int(hf_config[k]) for k in ("hidden_size", "intermediate_size")}
        if python is not None and peer == "llmcompressor" and g > 0 and any(i % g for i in inputs):
            python, why = (
                None,
                (
                    f"it refuses a group size that does not divide every layer's inputs ({g} does "
                    f"not divide {sorted(i for i in inputs if i % g)}); try --group-size 64"
                ),
            )
        if python is None:
            notes.append(f"{peer} skipped: {why}")
            print(notes[-1], flush=True)
            continue
        for scheme in peer_schemes:
            name = f"{peer} {with_group(scheme)}"
            settings = gptq_settings(scheme)
            if peer == "llmcompressor" and (settings["desc_act"] or settings["mse"]):
                note = (
                    f"llmcompressor {scheme} skipped: only the -plain settings are mapped onto "
                    "its GPTQModifier here"
                )
                notes.append(note)
                print(note, flush=True)
                continue
            print(f"running the peer: {name} ...", flush=True)
            row = {"name": name, "scheme": scheme, "peer": peer}
            try:
                out = work / f"{peer}-{scheme}"
                bits = int(scheme.split("-w")[1][0])
                info = run_peer(peer, python, folder, samples, bits, g, args.threads, out, settings)
                row["quantize_s"], row["total_s"] = info["quantize_s"], info["load_s"]
                note = f"{peer}: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
                if note not in notes:
                    notes.append(note)
                # GPTQModel wrote a GPTQ checkpoint (compiled through the GPTQ import);
                # llmcompressor an fp16 one.
                path = Path(
                    compiler.compile(
                        model_id=str(out),
                        max_length=max_length,
                        prefix=work / f"{peer}-{scheme}-compiled",
                        progress=False,
                    )
                )
                evaluate(row, path, compiled_weights(path))
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
                print(f"  {name}: FAILED: {row['error']}", flush=True)
            rows.append(row)

    # ---------------------------------------------------------------------------------------
    first_peer = {}
    for r in rows:
        if r.get("peer") and "error" not in r:
            first_peer.setdefault(r["scheme"], r)
    base = next((r for r in rows if r["scheme"] == "fp16" and "error" not in r), None)
    with_torch = any("ppl_torch" in r for r in rows)
    print()
    print(
        f"SmolLM2-135M-Instruct; calibration: {len(samples)} x {args.seqlen} tokens of the "
        f"shipped calibration text (seed 0); group size {g}, sym, LM "
        f"head fp16; perplexity: the first {len(eval_ids)} tokens of the evaluation text in "
        f"windows of {args.ppl_seqlen}, on the emulator"
        + (f" (PyTorch fp32: {len(torch_ids)} tokens)" if with_torch else "")
        + f"; {args.threads} threads; whole run {time.perf_counter() - started:.0f} s"
    )
    for scheme in sorted({r["scheme"] for r in rows if r["scheme"].startswith("gptq")}):
        print(f"  {scheme}: {describe(gptq_settings(scheme))}")
    rtn = {r["scheme"][-2:]: r for r in rows if r["scheme"].startswith("rtn") and "error" not in r}

    def gap_closed(r: Dict[str, Any]) -> str:
        """How much of RTN's perplexity gap to fp16 GPTQ closes, at the same bits (on the
        PyTorch column's tokens when there is one: more text, less noise)."""
        ref = rtn.get(r["scheme"].split("-")[1]) if r["scheme"].startswith("gptq") else None
        key = "ppl_torch" if with_torch else "ppl"
        if not ref or not base or key not in r or key not in ref or key not in base:
            return f"{'-':>8}"
        if ref[key] <= base[key]:
            return f"{'-':>8}"
        return f"{(ref[key] - r[key]) / (ref[key] - base[key]):8.0%}"

    header = f"{'scheme':30} {'perplexity':>10} {'vs fp16':>8} {'RTN gap':>8}"
    header += f" {'PyTorch':>8}" if with_torch else ""
    header += f" {'quantize s':>10} {'(total s)':>10} {'ppl vs peer':>11} {'time vs peer':>12}"
    print(header)
    for r in rows:
        if "error" in r:
            print(f"{r['name']:30} FAILED: {r['error'][:200]}")
            continue
        line = f"{r['name']:30} {r['ppl']:10.3f} "
        line += f"{r['ppl'] / base['ppl']:7.3f}x" if base else f"{'-':>8}"
        line += f" {gap_closed(r)}"
        if with_torch:
            line += f" {r['ppl_torch']:8.3f}" if "ppl_torch" in r else f" {'-':>8}"
        q, total = r.get("quantize_s"), r.get("total_s")
        line += f" {q:10.1f}" if q is not None else f" {'-':>10}"
        line += f" {f'({total:.1f})':>10}" if total is not None else f" {'':>10}"
        peer_row = None if r.get("peer") else first_peer.get(r["scheme"])
        if peer_row and q:
            line += f" {r['ppl'] / peer_row['ppl']:10.3f}x {q / peer_row['quantize_s']:11.2f}x"
        print(line)
    for note in notes:
        print(note)
    if first_peer:
        print(
            f"(vs peer: ours / {next(iter(first_peer.values()))['peer']}'s at the same bits and "
            "group size: ppl < 1x, ours is better; time < 1x, ours is faster. Total: our whole "
            "compile, or the peer's model load. RTN gap: the share of RTN's perplexity gap to "
            "fp16 that GPTQ closes, at the same bits.)"
        )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
