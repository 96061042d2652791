"""Tensor parallelism over a ring of N LPUs (issue 4): the split per device, the per-device
HBM layout, the emulated ring, and the errors.

Every architecture of tests/helpers.py is compiled for N = 1, 2, 4, 8; N > 1 must give the
logits of N = 1 within fp16 reduction-order tolerance (the all-reduce adds fp16-rounded
partial sums in another order than one MAC tree) and the same greedy tokens. A model whose
heads, KV heads, MLP width and vocabulary divide by no N checks the padding."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helpers as H
import numpy as np
import pytest

from hyperdex import _core
from hyperdex.arch.registry import model_traits
from hyperdex.compiled.record import load_converted
from hyperdex.errors import CapacityError, ConfigError
from hyperdex.tools.sharding import gather_tensors, head_slots, shard_tensors

DEVICES = (1, 2, 4, 8)
PROMPT = [[1, 5, 9, 33, 100, 7, 2, 3, 11, 250]]
NEW_TOKENS = 8
# Reduction order only: |N - 1| <= 1e-2 + 5e-3 |logit| (observed: below 5e-3 at logits ~3).
ATOL, RTOL = 1e-2, 5e-3


def _odd_llama() -> Any:
    # 6 heads over 3 KV heads, an MLP of 100 and a vocabulary of 500: nothing divides by 4 or 8.
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=96,
        intermediate_size=100,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        vocab_size=500,
        max_position_embeddings=H.MAX_POS,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=None,
    )


MODELS = [*H.CONFIGS, "odd"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, str]]:
    root = tmp_path_factory.mktemp("tp")
    out: dict[str, dict[int, str]] = {}
    for name in MODELS:
        folder = root / name
        if name == "odd":
            H.make_hf_model("llama", folder, config=_odd_llama())
        else:
            H.make_hf_model(name, folder)
        out[name] = {n: H.compile_model(folder, root / f"out{n}", num_device=n) for n in DEVICES}
    return out


@pytest.fixture(scope="module")
def runs(compiled: dict[str, dict[int, str]]) -> dict[str, dict[int, tuple[Any, Any, Any]]]:
    """(logits of the prompt, greedy ids, logits of each generated step) per model and N."""
    out: dict[str, dict[int, tuple[Any, Any, Any]]] = {}
    for name, paths in compiled.items():
        out[name] = {}
        for n, path in paths.items():
            model = H.load_lpu(path, n)
            logits = np.asarray(model(PROMPT).logits)
            res = model.generate(
                PROMPT,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                return_dict_in_generate=True,
                output_logits=True,
            )
            steps = np.stack([np.asarray(s)[0] for s in res.logits])
            out[name][n] = (logits, np.asarray(res.sequences), steps)
    return out


# -- the split -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("devices", DEVICES)
def test_split_then_gather_gives_back_every_tensor(
    compiled: dict[str, dict[int, str]], name: str, devices: int
) -> None:
    config, model_file = load_converted(Path(compiled[name][1]) / "ckpt")
    try:
        tensors = {n: np.array(model_file[n]) for n in model_file.names}
    finally:
        model_file.close()
    model = config["model"]
    shards = [shard_tensors(model, tensors, devices, d) for d in range(devices)]
    # Every shard has the shapes of the C++ shard_spec (write_params checks them too).
    spec = _core.shard_spec(H_spec(config), devices)
    for shard in shards:
        assert shard["blk.0.attn_q.weight"].shape[0] == spec.num_heads * spec.head_dim
        assert shard["blk.0.attn_k.weight"].shape[0] == spec.num_kv_heads * spec.head_dim
        assert shard["blk.0.ffn_up.weight"].shape[0] == spec.intermediate_size
        if devices > 1 or "output.weight" in shard:
            assert shard["output.weight"].shape[0] == (spec.lm_head_rows or spec.vocab_size)
        assert shard["tok_embd.weight"].shape[0] == model["vocab_size"]  # whole on every device
    back = gather_tensors(model, shards)
    if (
        "output.weight" not in tensors and devices > 1
    ):  # tied: the head slices are the embedding's rows
        np.testing.assert_array_equal(back.pop("output.weight"), tensors["tok_embd.weight"])
    assert sorted(back) == sorted(tensors)
    for n, t in tensors.items():
        np.testing.assert_array_equal(back[n], t, err_msg=n)


def H_spec(config: dict[str, Any]) -> Any:
    from hyperdex.arch.spec import model_spec

    return model_spec(config)


def test_padding_is_zero_and_kv_heads_are_replicated() -> None:
    # 3 KV heads on 2 devices: two each, the fourth is padding (with its query heads).
    assert head_slots(6, 3, 2, 0) == ([0, 1, 2, 3], [0, 1])
    assert head_slots(6, 3, 2, 1) == ([4, 5, -1, -1], [2, -1])
    # 3 KV heads on 8 devices: each KV head on 2 or 3 devices, its 2 query heads split.
    slots = [head_slots(6, 3, 8, d) for d in range(8)]
    assert [kv for _, kv in slots] == [[0], [0], [0], [1], [1], [1], [2], [2]]
    assert sorted(h for q, _ in slots for h in q if h >= 0) == list(range(6))
    assert [head_slots(4, 2, 4, d) for d in range(4)] == [
        ([0], [0]),
        ([1], [0]),
        ([2], [1]),
        ([3], [1]),
    ]
    # Padded rows are zeros: the gather refuses anything else.
    _, _, full = model_traits(
        {
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 5,
            "hidden_size": 4,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 3,
            "max_position_embeddings": 8,
        }
    )
    t = {
        "blk.0.ffn_up.weight": np.ones((3, 4), np.float16),
        "output.weight": np.ones((5, 4), np.float16),
    }
    shards = [shard_tensors(full, t, 2, d) for d in range(2)]
    assert (
        shards[1]["blk.0.ffn_up.weight"][1:].sum() == 0
        and shards[1]["output.weight"][2:].sum() == 0
    )
    shards[1]["output.weight"][2, 0] = 1
    with pytest.raises(Exception, match="padding"):
        gather_tensors(full, shards)


# -- the layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("devices", DEVICES)
def test_memory_map_per_device(
    compiled: dict[str, dict[int, str]], name: str, devices: int
) -> None:
    folder = Path(compiled[name][devices])
    mm = json.loads((folder / "config" / "memory_map.json").read_text())
    assert mm["num_device"] == devices
    C = mm["num_channels"]
    per_device = [d["param_files"] for d in mm["devices"]] if devices > 1 else [mm["param_files"]]
    assert len(per_device) == devices and all(len(files) == C for files in per_device)
    weights = mm["segments"]["weights"]["bytes_per_channel"]
    for d, files in enumerate(per_device):
        for c, f in enumerate(files):
            want = f"param/hbm_ch{c:02d}.bin" if devices == 1 else f"param/dev{d}/hbm_ch{c:02d}.bin"
            assert f["file"] == want and f["bytes"] == weights
            assert (folder / f["file"]).stat().st_size == weights
    # No two regions overlap, and each lies in its segment.
    regions = sorted(mm["regions"], key=lambda r: r["offset"])
    for a, b in zip(regions, regions[1:]):
        assert a["offset"] + a["bytes_per_channel"] <= b["offset"], (a["name"], b["name"])
    kv = mm["segments"]["kv_cache"]
    for r in regions:
        end = r["offset"] + r["bytes_per_channel"]
        if r["kind"] == "KvCache":
            assert kv["offset"] <= r["offset"] and end <= kv["offset"] + kv["bytes_per_channel"]
        else:
            assert end <= weights
    # Balanced: in each region the channels' shares differ by at most one row (one stream block).
    for r in regions:
        shares = [len(range(c, r["rows"], C)) * r["row_bytes"] for c in range(C)]
        assert max(shares) - min(shares) <= r["row_bytes"]
    # The KV cache holds each device's KV heads for max_length positions.
    spec_kv = max(1, -(-mm_model(folder)["num_kv_heads"] // devices))
    assert all(
        r["cols"] == spec_kv * mm_model(folder)["head_dim"] and r["rows"] == mm["max_length"]
        for r in regions
        if r["kind"] == "KvCache"
    )


def mm_model(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "ckpt" / "hyperdex_config.json").read_text())["model"]


# -- the ring -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("devices", DEVICES[1:])
def test_logits_and_greedy_tokens_match_one_device(
    runs: dict[str, dict[int, tuple[Any, Any, Any]]], name: str, devices: int
) -> None:
    ref_logits, ref_ids, ref_steps = runs[name][1]
    logits, ids, steps = runs[name][devices]
    assert logits.shape == ref_logits.shape
    assert H.within(logits, ref_logits, ATOL, RTOL), H.max_abs_diff(logits, ref_logits)
    assert not np.array_equal(logits, ref_logits), "N=1's bits exactly: no reduction ran?"
    # The same greedy tokens, step by step, while they have the same prefix. Two tokens whose
    # N=1 logits are closer than the reduction-order tolerance may swap (a tie at fp16
    # resolution); after a swap the sequences differ and comparing stops.
    new, ref_new = ids[0, len(PROMPT[0]) :], ref_ids[0, len(PROMPT[0]) :]
    for k in range(NEW_TOKENS):
        assert H.within(steps[k], ref_steps[k], ATOL, RTOL), (
            k,
            H.max_abs_diff(steps[k], ref_steps[k]),
        )
        if new[k] != ref_new[k]:
            gap = H.topk_gaps(ref_steps[k], 1)[0]
            top = float(np.max(np.abs(ref_steps[k])))
            assert gap <= 2 * (ATOL + RTOL * top), (k, new[k], ref_new[k], gap)
            break


def test_ring_session_runs_every_device_and_prefix_cache_works(
    compiled: dict[str, dict[int, str]], runs: dict[str, dict[int, tuple[Any, Any, Any]]]
) -> None:
    from hyperdex.transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        compiled["qwen2"][4], device_map={"lpu": 4}, prefix_cache_block_size=4
    )
    assert model._session.num_devices == 4
    assert model.device_description.startswith("a ring of 4 x emulator")
    first = np.asarray(model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False))
    np.testing.assert_array_equal(first, runs["qwen2"][4][1])
    other = [[7, 7, 8, 9, 10, 11, 12, 13]]
    model.generate(other, max_new_tokens=2, do_sample=False)  # the device now holds another
    # The prompt's blocks come back from the host pool into the KV caches of 4 devices.
    again = np.asarray(model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False))
    assert model.last_cached_tokens >= 8
    np.testing.assert_array_equal(again, first)


# -- errors -------------------------------------------------------------------------------


def test_loading_with_another_device_count_fails_clearly(
    compiled: dict[str, dict[int, str]],
) -> None:
    from hyperdex.transformers import AutoModelForCausalLM

    with pytest.raises(ConfigError) as e:
        AutoModelForCausalLM.from_pretrained(compiled["gpt2"][2], device_map={"lpu": 4})
    msg = str(e.value)
    assert "compiled for 2" in msg and "device_map={'lpu': 2}" in msg and "num_device=4" in msg


@pytest.mark.parametrize("n", [3, 6, 2048])
def test_bad_device_counts(compiled: dict[str, dict[int, str]], tmp_path: Path, n: int) -> None:
    hf = Path(compiled["gpt2"][1]) / "ckpt"
    with pytest.raises(ConfigError, match="num_device"):
        H.compile_model(hf, tmp_path, num_device=n)


def test_capacity_error_names_the_smallest_ring_that_fits() -> None:
    from hyperdex.arch.registry import model_traits
    from hyperdex.arch.spec import model_spec
    from hyperdex.presets import device_preset, load_preset
    from hyperdex.tools.compiler import _check_capacity, _plan_shard

    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    }  # Llama-2-13B: 26 GB of fp16 weights, more than one 16 GiB u55c
    name, _, model = model_traits(hf)
    spec = model_spec({"architecture": name, "model": model})
    preset = device_preset(load_preset("u55c"))
    passes = _core.PassOptions()
    with pytest.raises(CapacityError) as e:
        _check_capacity(spec, preset, 4096, passes, 1)
    msg = str(e.value)
    assert "u55c" in msg and "KV cache" in msg and "GiB" in msg, msg
    m = re.search(r"smallest ring that fits has (\d+) devices: compile with num_device=(\d+)", msg)
    assert m and m.group(1) == m.group(2), msg
    smallest = int(m.group(1))
    _plan_shard(spec, preset, 4096, passes, smallest)  # fits
    with pytest.raises(CapacityError):
        _plan_shard(spec, preset, 4096, passes, smallest // 2)
    if smallest // 2 > 1:
        with pytest.raises(CapacityError, match=f"with num_device={smallest // 2}, one device"):
            _check_capacity(spec, preset, 4096, passes, smallest // 2)


def test_hybrid_mode_on_a_ring_is_refused_clearly(compiled: dict[str, dict[int, str]]) -> None:
    from hyperdex.transformers import AutoModelForCausalLM

    with pytest.raises(ConfigError, match="hybrid mode.*num_device=1"):
        AutoModelForCausalLM.from_pretrained(compiled["llama"][2], device_map={"gpu": 1, "lpu": 2})


def test_memory_map_names_scratch_and_programs(compiled: dict[str, dict[int, str]]) -> None:
    folder = Path(compiled["llama"][4])
    mm = json.loads((folder / "config" / "memory_map.json").read_text())
    assert mm["scratch"]["space"] == "on-chip" and mm["scratch"]["bytes"] > 0
    assert mm["device_vocab_size"] == 128 and mm["vocab_size"] == H.VOCAB
    for f in mm["programs"].values():
        assert (folder / f).is_file()
