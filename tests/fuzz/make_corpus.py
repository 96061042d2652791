"""Writes the seed corpus of the Python harnesses (tests/fuzz/corpus/py_*/), each a small
valid artifact written by hyperdex's own writers where it has one:

- py_model_file: write_model_file (every dtype, a 0-d and an empty tensor, metadata);
- py_hf_checkpoint: a model.safetensors (the dtypes hyperdex reads, one it cannot convert,
  an empty tensor, __metadata__);
- py_gptq: a one-layer Llama GPTQ checkpoint (4 bits, groups of 16) packed with
  gptq_checkpoint's own packers, its config.json and quantize_config.json, and the
  converter's plan for it (plan.json), in one bundle (pyfuzz.pack_files);
- py_compiled: the JSON records of a tiny Llama compiled by AutoCompiler (compile.json, the
  memory map, ckpt/*.json), in one bundle (needs torch and transformers);
- py_gguf: a tiny llama GGUF (gguf.GGUFWriter) and the spec it was written from.

    python tests/fuzz/make_corpus.py [--only NAME ...]

The C++ harnesses' seeds come from hyperdex_fuzz_corpus (tests/fuzz/make_corpus.cpp).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HYPERDEX_PROGRESS", "0")

import pyfuzz  # noqa: E402

CORPUS = HERE / "corpus"


def save(name: str, file: str, data: bytes) -> None:
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file).write_bytes(data)
    print(f"{folder / file} ({len(data)} bytes)")


def safetensors(tensors: List[Tuple[str, str, np.ndarray]], metadata: Any = None) -> bytes:
    """A safetensors file: (name, dtype tag, array of the stored bytes) in order."""
    header: Dict[str, Any] = {}
    data = b""
    for name, tag, arr in tensors:
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {
            "dtype": tag,
            "shape": list(arr.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    return pyfuzz._safetensors(header, data)


def model_file() -> None:
    from hyperdex.formats.model_file import write_model_file

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hyperdex_model.bin"
        write_model_file(
            path,
            [
                ("tok_embd.weight", rng.standard_normal((4, 8)).astype(np.float16)),
                ("scale", np.array(0.5, dtype=np.float32)),
                ("empty", np.zeros((0, 3), dtype=np.int32)),
                ("codes", rng.integers(0, 16, (2, 8), dtype=np.uint8)),
                ("signed", rng.integers(-8, 8, (3,), dtype=np.int8)),
                ("ids", np.arange(5, dtype=np.int32)),
            ],
            metadata={"architecture": "LlamaForCausalLM", "config": {"hidden_size": 8}},
        )
        save("py_model_file", "seed", path.read_bytes())


def hf_checkpoint() -> None:
    rng = np.random.default_rng(1)
    save(
        "py_hf_checkpoint",
        "seed",
        safetensors(
            [
                ("model.embed_tokens.weight", "F16", rng.standard_normal((4, 8)).astype("<f2")),
                (
                    "model.norm.weight",
                    "BF16",
                    (np.ones(8, dtype="<f4").view("<u4") >> 16).astype("<u2"),
                ),
                ("lm_head.weight", "F32", rng.standard_normal((4, 8)).astype("<f4")),
                ("position_ids", "I64", np.arange(6, dtype="<i8")),
                ("mask", "BOOL", np.array([1, 0, 1], dtype=np.uint8)),
                ("codes", "U8", np.arange(4, dtype=np.uint8)),
                ("fp8", "F8_E4M3", np.arange(4, dtype=np.uint8)),  # read as unsupported
                ("empty", "F32", np.zeros((0, 2), dtype="<f4")),
            ],
            {"format": "pt"},
        ),
    )


def gptq() -> None:
    from hyperdex.formats import gptq_checkpoint as g

    rng = np.random.default_rng(2)
    vocab, hidden, heads, kv_heads, head_dim, ff = 8, 16, 2, 1, 8, 32
    bits, group = 4, 16
    tensors: List[Tuple[str, str, np.ndarray]] = []
    plan: List[Tuple[str, List[str]]] = []
    shapes: Dict[str, List[int]] = {}

    def fp16(hf: str, canonical: str, shape: Tuple[int, ...]) -> None:
        tensors.append((hf, "F16", rng.standard_normal(shape).astype("<f2")))
        plan.append((hf, [canonical]))
        shapes[canonical] = list(shape)

    def quantized(hf: str, canonical: str, out: int, cols: int) -> None:
        prefix = hf[: -len(".weight")]
        groups = cols // group
        codes = rng.integers(0, 1 << bits, (out, cols), dtype=np.uint8)
        tensors.append((prefix + ".qweight", "I32", g.pack_along_input(codes, bits)))
        zeros = np.full((groups, out), (1 << (bits - 1)) - 1, dtype=np.uint32)  # v1: zero - 1
        tensors.append((prefix + ".qzeros", "I32", g.pack_along_output(zeros, bits)))
        scales = (rng.random((groups, out)) * 0.01 + 0.001).astype("<f2")
        tensors.append((prefix + ".scales", "F16", scales))
        tensors.append((prefix + ".g_idx", "I32", (np.arange(cols) // group).astype("<i4")))
        plan.append((hf, [canonical]))
        shapes[canonical] = [out, cols]

    fp16("model.embed_tokens.weight", "tok_embd.weight", (vocab, hidden))
    fp16("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight", (hidden,))
    layer = "model.layers.0."
    quantized(layer + "self_attn.q_proj.weight", "blk.0.attn_q.weight", heads * head_dim, hidden)
    quantized(layer + "self_attn.k_proj.weight", "blk.0.attn_k.weight", kv_heads * head_dim, hidden)
    quantized(layer + "self_attn.v_proj.weight", "blk.0.attn_v.weight", kv_heads * head_dim, hidden)
    quantized(
        layer + "self_attn.o_proj.weight", "blk.0.attn_output.weight", hidden, heads * head_dim
    )
    fp16(layer + "post_attention_layernorm.weight", "blk.0.ffn_norm.weight", (hidden,))
    quantized(layer + "mlp.gate_proj.weight", "blk.0.ffn_gate.weight", ff, hidden)
    quantized(layer + "mlp.up_proj.weight", "blk.0.ffn_up.weight", ff, hidden)
    quantized(layer + "mlp.down_proj.weight", "blk.0.ffn_down.weight", hidden, ff)
    fp16("model.norm.weight", "output_norm.weight", (hidden,))
    fp16("lm_head.weight", "output.weight", (vocab, hidden))
    qc = {"bits": bits, "group_size": group, "desc_act": False, "sym": True}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": ff,
        "quantization_config": {"quant_method": "gptq", "checkpoint_format": "gptq", **qc},
    }
    info = {"model": {"vocab_size": vocab, "embed_dim": hidden}, "plan": plan, "shapes": shapes}
    bundle = pyfuzz.pack_files(
        {
            "config.json": json.dumps(config).encode(),
            "quantize_config.json": json.dumps(qc).encode(),
            "model.safetensors": safetensors(tensors, {"format": "pt"}),
            "plan.json": json.dumps(info).encode(),
        }
    )
    save("py_gptq", "seed", bundle)


def compiled() -> None:
    import torch
    import transformers

    from hyperdex.compiled import folder as f
    from hyperdex.tools import AutoCompiler

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "tiny-llama"
        cfg = transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=64,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=None,
        )
        cfg.architectures = ["LlamaForCausalLM"]
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(cfg).save_pretrained(str(src))
        out = AutoCompiler().compile(
            model_id=str(src), max_length=16, prefix=str(Path(tmp) / "out"), progress=False
        )
        folder = Path(out)
        info = json.loads((folder / f.COMPILE_INFO_NAME).read_text())
        names = [f.COMPILE_INFO_NAME] + [r["file"] for r in info["files"]]
        files = {n: (folder / n).read_bytes() for n in names}
        save("py_compiled", "seed", pyfuzz.pack_files(files))


GGUF_SPEC: Dict[str, Any] = {
    "kv": {
        "general.architecture": "llama",
        "llama.embedding_length": 8,
        "llama.attention.head_count": 2,
        "llama.attention.head_count_kv": 1,
        "llama.block_count": 1,
        "llama.feed_forward_length": 16,
        "llama.context_length": 32,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": 10000.0,
        "llama.rope.dimension_count": 4,
        "llama.vocab_size": 8,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    },
    "tensors": {
        "token_embd.weight": [[8, 8], 0.5],
        "blk.0.attn_norm.weight": [[8], 1.0],
        "blk.0.attn_q.weight": [[8, 8], 0.1],
        "blk.0.attn_k.weight": [[4, 8], 0.2],
        "blk.0.attn_v.weight": [[4, 8], 0.3],
        "blk.0.attn_output.weight": [[8, 8], 0.4],
        "blk.0.ffn_norm.weight": [[8], 1.0],
        "blk.0.ffn_gate.weight": [[16, 8], 0.1],
        "blk.0.ffn_up.weight": [[16, 8], 0.2],
        "blk.0.ffn_down.weight": [[8, 16], 0.3],
        "output_norm.weight": [[8], 1.0],
    },
}


def gguf() -> None:
    bundle = pyfuzz.pack_files(
        {"model.gguf": pyfuzz.write_gguf(GGUF_SPEC), "spec.json": json.dumps(GGUF_SPEC).encode()}
    )
    save("py_gguf", "seed", bundle)


MAKERS = {
    "py_model_file": model_file,
    "py_hf_checkpoint": hf_checkpoint,
    "py_gptq": gptq,
    "py_compiled": compiled,
    "py_gguf": gguf,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=sorted(MAKERS), default=sorted(MAKERS))
    args = p.parse_args()
    for name in args.only:
        MAKERS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
