"""The device side of quantized weights (ISA v3): a model whose linears are RTN codes made
here in numpy runs on the emulator exactly as the fp16 model whose weights are the
dequantized values (docs/isa.md: a quantized MATMUL is the fp16 MATMUL over w')."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import compile_model

from hyperdex import _core
from hyperdex.arch.spec import model_spec
from hyperdex.compiled.record import load_converted
from hyperdex.compiled.session import open_session
from hyperdex.errors import ConfigError
from hyperdex.presets import device_preset, load_preset
from hyperdex.tools.lowering import memory_map_dict

LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def rtn(w: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u8 codes, fp16 scales, fp16 dequantized w') of w [out, in], symmetric per group, as
    the shared plan defines RTN (fp16 scale, codes computed with it, round half to even). A
    group size that does not divide ``in`` leaves a shorter last group."""
    out, cols = w.shape
    g = cols if group == -1 else min(group, cols)
    groups = -(-cols // g)
    z, top = 2 ** (bits - 1), 2**bits - 1
    padded = np.zeros((out, groups * g), np.float32)
    padded[:, :cols] = w
    wg = padded.reshape(out, groups, g)
    absmax = np.abs(wg).max(axis=2)
    scale = np.where(absmax == 0, 1.0, 2 * absmax / top).astype(np.float16)
    q = np.rint(wg / scale.astype(np.float32)[:, :, None]) + z
    codes = np.clip(q, 0, top).astype(np.uint8)
    deq = (codes.astype(np.float32) - z) * scale.astype(np.float32)[:, :, None]
    deq = deq.astype(np.float16).reshape(out, groups * g)[:, :cols]
    return np.ascontiguousarray(codes.reshape(out, groups * g)[:, :cols]), scale, deq


@pytest.fixture(scope="module")
def converted(tiny_llama, tmp_path_factory):
    folder = Path(compile_model(tiny_llama, tmp_path_factory.mktemp("q"), max_length=64))
    config, model_file = load_converted(folder / "ckpt")
    tensors = {n: np.array(model_file[n]) for n in model_file.names}
    model_file.close()
    return config, tensors


def build(
    folder: Path, config: dict[str, Any], tensors: dict[str, np.ndarray], passes: Any = None
) -> Any:
    """A compiled folder made with the core directly (plan, params, programs); a session."""
    preset = load_preset("u55c")
    spec = model_spec(config)
    core_preset = device_preset(preset)
    passes = passes or _core.PassOptions()
    max_tokens = _core.choose_max_tokens(spec, core_preset, 32)
    plan = _core.plan_memory(spec, core_preset, 32, min(max_tokens, 8), passes)
    (folder / "param").mkdir(parents=True)
    (folder / "inst").mkdir()
    files = _core.write_params(spec, plan, tensors, str(folder / "param"))
    records = [
        {"file": f"param/{Path(f.path).name}", "bytes": f.bytes, "crc32": f.crc32} for f in files
    ]
    mm = memory_map_dict(plan, preset, 1, records)
    prefill, decode = _core.generate_programs(spec, plan, passes)
    prefill.save(str(folder / "inst" / "prefill.bin"))
    decode.save(str(folder / "inst" / "decode.bin"))
    session, _ = open_session(folder, mm, "emu", num_threads=2)
    return session, mm, plan


def run(session: Any) -> np.ndarray:
    """Logits of a prompt longer than a prefill chunk, then of three decode steps."""
    ids = np.array([5, 77, 3, 120, 9, 64, 31, 2, 18, 100, 44], np.int32)
    _, logits = session.prefill(ids, logits_all=True)
    rows = [logits]
    token = int(np.argmax(logits[-1]))
    for _ in range(3):
        token, step = session.decode(token)
        rows.append(step[None, :])
    return np.concatenate(rows)


def quantize(
    config: dict[str, Any],
    tensors: dict[str, np.ndarray],
    bits: int,
    group: int,
    head: bool,
) -> tuple[dict, dict, dict, dict]:
    """(quantized config, its tensors, the fp16 reference config, its tensors)."""
    qcfg = copy.deepcopy(config)
    qcfg["quantization"] = {"method": "rtn", "bits": bits, "group_size": group, "sym": True}
    qcfg["quantization"]["quantize_lm_head"] = head
    qt, ref = dict(tensors), dict(tensors)
    names = [n for n in tensors if n.endswith(".weight") and n.split(".")[-2] in LINEARS]
    if head:
        names.append("output.weight")
    for name in names:
        codes, scales, deq = rtn(tensors[name], bits, group)
        qt[name] = codes
        qt[name[: -len(".weight")] + ".scales"] = scales
        ref[name] = deq
    return qcfg, qt, copy.deepcopy(config), ref


@pytest.mark.parametrize(
    "bits,group,head",
    [
        (4, 16, False),
        (4, 32, True),
        (8, -1, False),
        (8, 32, True),
        (4, -1, True),
        (4, 48, True),  # 64 inputs = 48 + 16, 96 = 2 x 48: a shorter last group, SIMD path
        (8, 40, False),  # 64 = 40 + 24, 96 = 2 x 40 + 16: a shorter last group, generic path
    ],
    ids=[
        "int4-g16",
        "int4-g32-head",
        "int8-row",
        "int8-g32-head",
        "int4-row-head",
        "int4-g48-short-last",
        "int8-g40-short-last",
    ],
)
def test_quantized_model_equals_fp16_model_of_dequantized_weights(
    converted, tmp_path, bits, group, head
):
    config, tensors = converted
    qcfg, qt, rcfg, ref = quantize(config, tensors, bits, group, head)
    qs, qmm, qplan = build(tmp_path / "q", qcfg, qt)
    rs, _, rplan = build(tmp_path / "ref", rcfg, ref)
    kinds = {r["name"]: r for r in qmm["regions"]}
    assert kinds["blk.0.attn_qkv"]["kind"] == "QMatrix"
    assert kinds["blk.0.attn_qkv"]["bits"] == bits
    assert kinds["blk.1.ffn_down"]["group_size"] == (96 if group == -1 else group)
    assert kinds["output"]["kind"] == ("QMatrix" if head else "Matrix")
    assert kinds["tok_embd"]["kind"] == "Matrix"

    def stream_bytes(plan: Any) -> int:
        return sum(r.rows * r.row_bytes for r in plan.regions if r.kind != _core.RegionKind.KvCache)

    assert stream_bytes(qplan) < stream_bytes(rplan)
    got, want = run(qs), run(rs)
    np.testing.assert_array_equal(got, want)  # bit for bit
    # The weights did change: the fp16 original gives other logits.
    os_, _, _ = build(tmp_path / "orig", config, tensors)
    assert not np.array_equal(run(os_), got)


def test_every_pass_combination_computes_the_same_bits(converted, tmp_path):
    config, tensors = converted
    qcfg, qt, _, _ = quantize(config, tensors, 4, 16, True)
    off = _core.PassOptions()
    for name in ("fuse_epilogue", "fuse_qkv", "fuse_gate_up", "reorder", "fuse_argmax"):
        setattr(off, name, False)
    session, mm, _ = build(tmp_path / "off", qcfg, qt, off)
    kinds = {r["name"]: r["kind"] for r in mm["regions"]}
    assert kinds["blk.0.attn_k"] == kinds["blk.0.ffn_gate"] == "QMatrix"
    np.testing.assert_array_equal(run(session), run(build(tmp_path / "on", qcfg, qt)[0]))


def test_tied_embeddings_get_a_quantized_head_of_their_own(converted, tmp_path):
    config, tensors = converted
    tied = copy.deepcopy(config)
    tied["model"]["tie_word_embeddings"] = True
    base = {n: t for n, t in tensors.items() if n != "output.weight"}
    # The quantizer gives a tied model's head its own codes: those of the embedding table.
    with_head = dict(base, **{"output.weight": base["tok_embd.weight"]})
    qcfg, qt, _, ref = quantize(tied, with_head, 4, 16, True)
    qs, qmm, _ = build(tmp_path / "q", qcfg, qt)
    assert {r["name"]: r["kind"] for r in qmm["regions"]}["output"] == "QMatrix"
    assert np.array_equal(qt["tok_embd.weight"], tensors["tok_embd.weight"])  # table stays fp16
    untied = copy.deepcopy(config)  # the reference: an untied model whose head is w'
    rs, _, _ = build(tmp_path / "ref", untied, ref)
    np.testing.assert_array_equal(run(qs), run(rs))


def test_program_listing_and_instructions_show_the_format(converted, tmp_path):
    config, tensors = converted
    qcfg, qt, _, _ = quantize(config, tensors, 4, 32, False)
    session, mm, plan = build(tmp_path / "q", qcfg, qt)
    names = {r.base: r.name for r in plan.regions}
    text = session.program("decode").disassemble(names)
    assert f"ISA v{_core.ISA_VERSION}" in text and "int4 group=32" in text
    mms = [d for d in session.program("decode").instructions() if d["op"] == "MATMUL"]
    by_name = {names[d["w0"][0]]: d for d in mms}
    assert (by_name["blk.0.ffn_gate_up"]["i0"], by_name["blk.0.ffn_gate_up"]["i1"]) == (4, 32)
    assert (by_name["output"]["i0"], by_name["output"]["i1"]) == (0, 0)
    # hdex-objdump reads the folder: the regions named, the format shown, cycles estimated.
    from hyperdex.tools.objdump import listing

    (tmp_path / "q" / "config").mkdir()
    (tmp_path / "q" / "config" / "memory_map.json").write_text(json.dumps(mm))
    text = listing(tmp_path / "q")
    assert "blk.1.attn_qkv" in text and "int4 group=32" in text and "cycles" in text


def test_model_spec_reads_the_quantization_record(converted):
    config, _ = converted
    assert model_spec(config).weight_bits == 16  # no record: fp16
    cfg = dict(config, quantization=None)
    assert model_spec(cfg).weight_bits == 16
    cfg = dict(config, quantization={"bits": 4, "group_size": 32, "sym": True})
    s = model_spec(cfg)
    assert (s.weight_bits, s.group_size, s.quantize_lm_head) == (4, 32, False)
    s = model_spec(dict(config, quantization={"bits": 8, "group_size": -1}))
    assert (s.weight_bits, s.group_size) == (8, 0)
    for bad, needle in [
        ({"bits": 4, "group_size": 32, "sym": False}, "sym=True"),
        ({"bits": 3, "group_size": 32}, "4 or 8"),
        ({"bits": 4, "group_size": 0}, "group_size"),
        ({"bits": 4, "group_size": 7}, "even size"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            model_spec(dict(config, quantization=bad))


def test_write_params_rejects_fp16_weights_for_a_quantized_plan(converted, tmp_path):
    config, tensors = converted
    qcfg, qt, _, _ = quantize(config, tensors, 8, 32, False)
    qt["blk.0.attn_q.weight"] = tensors["blk.0.attn_q.weight"]
    with pytest.raises(ConfigError, match="blk.0.attn_q.weight is f16"):
        build(tmp_path / "q", qcfg, qt)


# -- tensor parallelism ---------------------------------------------------------------------


def build_ring(folder: Path, config: dict[str, Any], tensors: dict[str, np.ndarray], n: int):
    """As build(), on an emulated ring of n devices, each with its shard's parameters."""
    from hyperdex.tools.sharding import shard_tensors

    preset = load_preset("u55c")
    core_preset = device_preset(preset)
    spec = _core.shard_spec(model_spec(config), n)
    plan = _core.plan_memory(spec, core_preset, 32, 8)
    (folder / "inst").mkdir(parents=True)
    records = []
    for rank in range(n):
        ddir = folder / "param" / f"dev{rank}"
        ddir.mkdir(parents=True)
        shard = shard_tensors(config["model"], tensors, n, rank, config.get("quantization"))
        files = _core.write_params(spec, plan, shard, str(ddir))
        records.append(
            [
                {"file": f"param/dev{rank}/{Path(f.path).name}", "bytes": f.bytes, "crc32": f.crc32}
                for f in files
            ]
        )
    mm = memory_map_dict(
        plan,
        preset,
        n,
        records[0],
        vocab_size=int(config["model"]["vocab_size"]),
        device_param_files=records,
    )
    prefill, decode = _core.generate_programs(spec, plan, _core.PassOptions(), n)
    prefill.save(str(folder / "inst" / "prefill.bin"))
    decode.save(str(folder / "inst" / "decode.bin"))
    session, _ = open_session(folder, mm, "emu", num_threads=2)
    return session


@pytest.mark.parametrize("bits,group,devices", [(4, 16, 2), (8, 8, 4), (4, 8, 4)])
def test_ring_of_quantized_shards_equals_ring_of_dequantized_shards(
    converted, tmp_path, bits, group, devices
):
    config, tensors = converted
    qcfg, qt, rcfg, ref = quantize(config, tensors, bits, group, True)
    got = run(build_ring(tmp_path / "q", qcfg, qt, devices))
    # Each device's quantized MATMULs are its fp16 MATMULs over w', padding included.
    np.testing.assert_array_equal(got, run(build_ring(tmp_path / "r", rcfg, ref, devices)))
    one = run(build(tmp_path / "one", qcfg, qt)[0])
    assert np.all(np.abs(got - one) <= 1e-2 + 5e-3 * np.abs(one))  # reduction order only


@pytest.mark.parametrize("devices", [2, 4, 8])
def test_split_then_gather_gives_back_quantized_tensors(converted, devices):
    from hyperdex.tools.sharding import gather_tensors, shard_tensors

    config, tensors = converted
    qcfg, qt, _, _ = quantize(config, tensors, 4, 8, True)
    model, q = qcfg["model"], qcfg["quantization"]
    if devices == 8:  # the MLP's 96 inputs in shares of 12: not whole groups of 8
        with pytest.raises(ConfigError, match="blk.0.ffn_down.weight: 8 devices .* group size 8"):
            shard_tensors(model, qt, devices, 0, q)
        return
    shards = [shard_tensors(model, qt, devices, d, q) for d in range(devices)]
    spec = _core.shard_spec(model_spec(qcfg), devices)
    for shard in shards:
        ff = spec.intermediate_size
        assert shard["blk.0.ffn_down.weight"].shape == (64, ff)
        assert shard["blk.0.ffn_down.scales"].shape == (64, ff // 8)
        assert shard["blk.0.attn_output.scales"].shape == (64, spec.num_heads * 16 // 8)
        assert shard["output.scales"].shape == (spec.lm_head_rows, 64 // 8)
        assert shard["blk.1.attn_q.weight"].dtype == np.uint8
    back = gather_tensors(model, shards, q)
    assert sorted(back) == sorted(qt)
    for n, t in qt.items():
        np.testing.assert_array_equal(back[n], t, err_msg=n)


def test_padding_dequantizes_to_zero_and_errors_name_the_fix():
    from hyperdex.arch.registry import model_traits
    from hyperdex.tools.sharding import gather_tensors, shard_tensors

    gpt2 = {"architectures": ["GPT2LMHeadModel"], "vocab_size": 5, "n_embd": 16, "n_head": 2}
    _, _, model = model_traits(dict(gpt2, n_inner=28, n_layer=1, n_positions=8))
    q = {"bits": 4, "group_size": 4}
    rng = np.random.default_rng(0)
    t = {
        "blk.0.ffn_up.weight": rng.integers(0, 16, (28, 16), dtype=np.uint8),
        "blk.0.ffn_up.scales": np.ones((28, 4), np.float16),
        "blk.0.ffn_down.weight": rng.integers(0, 16, (16, 28), dtype=np.uint8),
        "blk.0.ffn_down.scales": np.ones((16, 7), np.float16),
        "output.weight": rng.integers(0, 16, (5, 16), dtype=np.uint8),
        "output.scales": np.ones((5, 4), np.float16),
        "blk.0.ffn_norm.weight": np.ones(16, np.float16),
    }
    # 28 MLP rows over 2 devices: 14 each, no whole number of groups of 4.
    with pytest.raises(ConfigError, match="ffn_down.weight: 2 devices split its 28 inputs"):
        shard_tensors(model, t, 2, 0, q)
    # Over 8: 4 each, the last device's 4 are padding: code z = 8, scale 0.
    shards = [shard_tensors(model, t, 8, d, q) for d in range(8)]
    last = shards[7]
    assert np.all(last["blk.0.ffn_up.weight"] == 8) and np.all(last["blk.0.ffn_up.scales"] == 0)
    assert np.all(last["blk.0.ffn_down.weight"] == 8)
    assert np.all(last["blk.0.ffn_down.scales"] == 0)
    np.testing.assert_array_equal(shards[6]["blk.0.ffn_down.scales"], np.ones((16, 1)))
    # The vocabulary of 5 on 8 devices: one row each, the last three padding.
    assert np.all(last["output.weight"] == 8) and np.all(last["output.scales"] == 0)
    back = gather_tensors(model, shards, q)
    for n in t:
        np.testing.assert_array_equal(back[n], t[n], err_msg=n)
    last["blk.0.ffn_down.weight"][0, 3] = 9
    with pytest.raises(Exception, match="blk.0.ffn_down.weight: device 7 has non-zero padding"):
        gather_tensors(model, shards, q)
    with pytest.raises(ConfigError, match="quantization record"):
        shard_tensors(model, t, 2, 0)
    per_row = dict(t, **{"blk.0.ffn_down.scales": np.ones((16, 1), np.float16)})
    with pytest.raises(ConfigError, match="per row"):
        shard_tensors(model, per_row, 8, 0, dict(q, group_size=-1))
