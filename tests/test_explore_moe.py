"""Mixtures of experts in the explorer (issue 17): the analytical engine holds every expert,
streams the experts a step's tokens touch and computes k experts per token; the LPU engine
prices the same config through the cost model; dense models keep their figures exactly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from hyperdex.errors import ConfigError
from hyperdex.explore import explore, load_model
from hyperdex.explore.cli import main
from hyperdex.explore.core import _point_columns
from hyperdex.explore.inputs.loader import PRESETS
from hyperdex.explore.mapping import search
from hyperdex.explore.perf.operators import head_ops, layer_ops
from hyperdex.explore.perf.roofline import memory_per_chip, op_seconds, phase

MIXTRAL: dict[str, Any] = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 32768,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 1e6,
    "tie_word_embeddings": False,
}
# Mixtral without its mixture: Mistral 7B's shape, one dense MLP of the same width.
MISTRAL: dict[str, Any] = {
    k: v for k, v in MIXTRAL.items() if k not in ("num_local_experts", "num_experts_per_tok")
}
MISTRAL.update(architectures=["MistralForCausalLM"], model_type="mistral")
ONE = np.ones((1, 1))


def _counts(cfg: dict[str, Any]) -> dict[str, int]:
    """Parameters of a Mixtral-shaped config, by hand: all of them, those one token uses
    (per token the LM head is read whole, the embedding table only as one gathered row), and
    one expert's."""
    d, ff, layers, vocab = (
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_hidden_layers"],
        cfg["vocab_size"],
    )
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E, k = cfg.get("num_local_experts", 1), cfg.get("num_experts_per_tok", 1)
    dh = d // heads
    attn = d * (heads + 2 * kv) * dh + heads * dh * d
    expert = 3 * d * ff  # gate, up, down
    router = E * d if "num_local_experts" in cfg else 0
    return {
        "total": layers * (attn + E * expert + router) + 2 * vocab * d,
        "active": layers * (attn + k * expert + router) + vocab * d,
        "expert": expert,
        "router": router,
        "layers": layers,
    }


def _config(tmp_path: Path, cfg: dict[str, Any], name: str = "mixtral") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder / "config.json"


def _params(model: Any, hardware: str = "a100") -> dict[str, np.ndarray]:
    """The perf model's inputs for the first design point of ``model`` on ``hardware``, as
    the explorer builds them."""
    r = explore(hardware, model, out_dir=None, plots=False, progress=False)
    designs, S, mdl = r.context
    return search.params(_point_columns(designs, S, mdl.sweep, np.array([0])))


def _sum(ops: list, what: str, names: tuple[str, ...] = ()) -> float:
    return float(
        sum(float(np.ravel(getattr(o, what))[0]) for o in ops if not names or o.name in names)
    )


def test_mixtral_config_fills_the_expert_fields(tmp_path):
    f = load_model(_config(tmp_path, MIXTRAL)).sweep.fields
    assert f["model.num_experts"] == [8] and f["model.experts_per_token"] == [2]
    assert f["model.d_ff"] == [14336]  # each expert's width
    dense = load_model(_config(tmp_path, MISTRAL, "mistral")).sweep.fields
    assert dense["model.num_experts"] == [0] and dense["model.experts_per_token"] == [0]


def test_memory_per_chip_holds_all_experts(tmp_path):
    c = _counts(MIXTRAL)
    assert 46.6e9 < c["total"] < 46.8e9  # Mixtral 8x7B's published 46.7B parameters
    P = _params(_config(tmp_path, MIXTRAL))
    assert float(memory_per_chip(P, ONE, ONE, ONE)["weights"][0, 0]) == pytest.approx(
        2 * c["total"], rel=1e-12
    )
    # Four devices: a quarter of every expert each, the router (fp16) whole on each.
    routers = c["layers"] * c["router"] * 2
    four = float(memory_per_chip(P, 4 * ONE, ONE, ONE)["weights"][0, 0])
    assert four == pytest.approx((2 * c["total"] - routers) / 4 + routers, rel=1e-12)
    # 93 GB of weights: no A100 (80 GB) holds Mixtral alone, so every mapping spans chips.
    r = explore("a100", _config(tmp_path, MIXTRAL), out_dir=None, plots=False, progress=False)
    ok = r.feasible
    assert len(ok) and (ok["decode_chips"] >= 2).all() and (ok["prefill_t"] >= 2).all()
    assert (ok["mem_gb_per_chip"] * ok["decode_chips"] > 2 * c["total"] / 1e9).all()


def test_batch_1_decode_streams_the_active_parameters(tmp_path):
    c = _counts(MIXTRAL)
    assert 12.7e9 < c["active"] < 12.8e9  # 12.9B with the embedding table, which is gathered
    P = _params(_config(tmp_path, MIXTRAL))
    ops = layer_ops(P, ONE, ONE, ONE, 100 * ONE, prefill=False)
    streamed = c["layers"] * _sum(ops, "weight_bytes") + _sum(
        head_ops(P, ONE, ONE, ONE), "weight_bytes"
    )
    assert streamed == pytest.approx(2 * c["active"], rel=1e-9)
    assert streamed < 0.3 * 2 * c["total"]  # not every expert ...
    one_wide = 2 * (c["active"] - c["layers"] * c["expert"])  # a dense model one expert wide
    assert streamed > 1.7 * one_wide  # ... nor one
    # FLOPs of the MLP per token: k experts and the router (2 per multiply-add).
    mlp = _sum(ops, "flops", ("router", "ffn_up", "ffn_down"))
    assert mlp == pytest.approx(2 * (2 * c["expert"] + c["router"]), rel=1e-12)


def _expert_bytes(P: dict[str, np.ndarray], batch: float, s: float = 1.0) -> float:
    ops = layer_ops(P, ONE, batch * ONE, s * ONE, 100 * ONE, prefill=s > 1)
    return _sum(ops, "weight_bytes", ("ffn_up", "ffn_down"))


def test_large_batches_stream_every_expert(tmp_path):
    P = _params(_config(tmp_path, MIXTRAL))
    one = 2 * _counts(MIXTRAL)["expert"]  # bytes of one expert
    assert _expert_bytes(P, 1) == pytest.approx(2 * one, rel=1e-12)  # k = 2
    # Uniform routing: 4 tokens touch 8 (1 - (6/8)^4) = 5.47 distinct experts on average.
    assert _expert_bytes(P, 4) == pytest.approx(8 * (1 - 0.75**4) * one, rel=1e-12)
    sizes = [_expert_bytes(P, b) for b in (1, 2, 4, 8, 16, 64)]
    assert sizes == sorted(sizes) and sizes[-1] < 8 * one
    assert _expert_bytes(P, 64) == pytest.approx(8 * one, rel=1e-7)
    assert _expert_bytes(P, 1024) == pytest.approx(8 * one, rel=1e-12)
    assert _expert_bytes(P, 1, s=128) == pytest.approx(8 * one, rel=1e-12)  # a prompt
    # Per token the FLOPs stay k experts' at any batch.
    ops = layer_ops(P, ONE, 64 * ONE, ONE, 100 * ONE, prefill=False)
    per_token = _sum(ops, "flops", ("ffn_up", "ffn_down")) / 64
    assert per_token == pytest.approx(2 * 2 * _counts(MIXTRAL)["expert"], rel=1e-12)


def test_dense_figures_are_unchanged(tmp_path):
    """Mistral 7B's figures as the explorer computed them before mixtures were modelled."""
    P = _params(_config(tmp_path, MISTRAL, "mistral"))
    for b, flops, nbytes in ((1.0, 438056576.0, 436965376.0), (64.0, 28035620864.0, 484704256.0)):
        ops = layer_ops(P, ONE, b * ONE, ONE, 100 * ONE, prefill=False)
        assert [o.name for o in ops if o.name in ("router", "topk_combine")] == []
        assert _sum(ops, "weight_bytes") == 436207616.0
        assert (_sum(ops, "flops"), _sum(ops, "bytes")) == (flops, nbytes)
    mem = memory_per_chip(P, ONE, ONE, ONE)
    assert (float(mem["weights"][0, 0]), float(mem["total"][0, 0])) == (
        14482931712.0,
        14533263360.0,
    )
    r = explore(
        "a100", _config(tmp_path, MISTRAL, "mistral"), out_dir=None, plots=False, progress=False
    )
    best = r.best()
    assert best["decode_t"] == 1.0
    assert best["decode_ms_per_token"] == pytest.approx(14.842558695066712, rel=1e-12)
    assert best["ttft_ms"] == pytest.approx(1233.8372402884388, rel=1e-12)
    assert best["mem_gb_per_chip"] == pytest.approx(19.31476992, rel=1e-12)
    assert best["decode_usd_per_mtok"] == pytest.approx(0.030369563313604103, rel=1e-12)


def test_dense_points_beside_mixtures_keep_their_figures(tmp_path):
    """A sweep priced in one pass with dense and mixture points: the dense rows match a dense
    pass bit for bit, launch overheads included (the mixture's operators cost them nothing)."""
    dense = _params(_config(tmp_path, MISTRAL, "mistral"))
    moe = _params(_config(tmp_path, MIXTRAL))
    both = {k: np.concatenate([dense[k], moe[k]]) for k in dense}
    for P in (dense, both):
        P["kernel_s"] = np.full_like(P["kernel_s"], 5e-6)
        P["fused"] = np.zeros_like(P["fused"])
    t, p, m = np.array([[1.0, 2.0, 4.0]]), np.array([[1.0, 1.0, 2.0]]), np.array([[1.0, 1.0, 2.0]])
    bw = np.full((1, 3), 2e12)
    for prefill in (False, True):
        a = phase(dense, t, p, m, prefill, bw)
        b = phase(both, t, p, m, prefill, bw)
        for key in a:
            assert np.array_equal(a[key][0], b[key][0]), key
        assert (b["latency_s"][1] > b["latency_s"][0]).all()  # the mixture's row differs
    assert np.array_equal(
        memory_per_chip(dense, t, p, m)["total"][0], memory_per_chip(both, t, p, m)["total"][0]
    )
    ops = layer_ops(both, t, ONE, ONE, 100 * ONE, prefill=False)
    router = next(o for o in ops if o.name == "router")
    assert (op_seconds(router, both, bw)[0] == 0).all()  # no router, no launch


def test_model_yaml_mixture_is_checked(tmp_path):
    def write(**over: Any) -> Path:
        data = yaml.safe_load((PRESETS / "model" / "mixtral-8x7b.yaml").read_text())
        data["model"].update(over)
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    f = load_model("mixtral-8x7b").sweep.fields
    assert (f["model.num_experts"], f["model.experts_per_token"]) == ([8], [2])
    with pytest.raises(ConfigError, match=r"experts_per_token=3 must be at most num_experts=2"):
        load_model(write(num_experts=2, experts_per_token=3))
    with pytest.raises(ConfigError, match=r"num_experts=8 and experts_per_token=0; a mixture"):
        load_model(write(experts_per_token=0))
    with pytest.raises(ConfigError, match=r"num_experts=0 and experts_per_token=2"):
        load_model(write(num_experts=0))
    with pytest.raises(ConfigError, match=r"model.num_experts must be at least 0"):
        load_model(write(num_experts=-1))
    with pytest.raises(ConfigError, match=r"unknown field 'model.experts' \(did you mean"):
        load_model(write(experts=8))
    # The preset and the HF config are the same model to the analytical engine.
    from_yaml = _params("mixtral-8x7b")
    from_hf = _params(_config(tmp_path, MIXTRAL))
    for key in ("d", "d_ff", "experts", "top_k", "layers", "kv_heads", "vocab"):
        assert np.array_equal(from_yaml[key], from_hf[key]), key


def test_tensor_parallelism_splits_each_expert(tmp_path):
    P = _params(_config(tmp_path, MIXTRAL))
    full = _expert_bytes(P, 1)
    ops = layer_ops(P, 4 * ONE, ONE, ONE, 100 * ONE, prefill=False)
    assert _sum(ops, "weight_bytes", ("ffn_up", "ffn_down")) == pytest.approx(full / 4)
    router = next(o for o in ops if o.name == "router")  # replicated: whole on each device
    assert float(router.weight_bytes[0, 0]) == 2 * 8 * 4096
    # Each expert's width must split: 14344 = 8 x 1793, so 16 devices cannot.
    P = _params(_config(tmp_path, dict(MIXTRAL, intermediate_size=14344), "odd"))
    ev = search.evaluate(P, 16 * ONE, ONE, ONE, ONE)
    why = search.reason(ev, P, 0, 0, {})
    assert why == "tensor_parallel=16 does not divide d_ff=14344 (each expert's width)"


def _lpu_or_skip() -> None:
    pytest.importorskip("hyperdex._core")


def _lpu_system(tmp_path: Path) -> Path:
    """The lpu system at short lengths: batch 1, a ring of up to 16 devices."""
    system = {"workload": {"prompt_len": 32, "gen_len": 16}, "mapping": {"max_chips": 16}}
    data = yaml.safe_load((PRESETS / "system" / "lpu.yaml").read_text())
    for section, fields in system.items():
        data[section].update(fields)
    path = tmp_path / "lpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_hdex_explore_sweeps_a_mixtral_config_on_both_engines(tmp_path, capsys):
    cfg = _config(tmp_path, MIXTRAL)
    out = tmp_path / "out"
    assert main(["-hw", "a100", "-m", str(cfg), "-o", str(out), "-q"]) == 0
    with open(out / "a100" / "mixtral.pkl", "rb") as fh:
        roof = pickle.load(fh)
    assert (out / "a100" / "mixtral_roofline.png").stat().st_size > 0
    assert len(roof["feasible"]) > 0 and roof["feasible"].all()
    assert set(roof["engine"]) == {"roofline"}
    weights_gb = 2 * _counts(MIXTRAL)["total"] / 1e9  # every chip holds its share of all experts
    assert (roof["mem_gb_per_chip"] * roof["decode_chips"] > weights_gb).all()
    _lpu_or_skip()
    sys_path = _lpu_system(tmp_path)
    args = ["-hw", "lpu-asic", "-m", str(cfg), "-s", str(sys_path), "-o", str(out), "-q"]
    assert main(args + ["--no-plots"]) == 0
    with open(out / "lpu-asic" / "mixtral.pkl", "rb") as fh:
        lpu = pickle.load(fh)
    assert len(lpu["feasible"]) == 1 and lpu["feasible"].all()
    assert set(lpu["engine"]) == {"cost model"}
    # 93 GB of experts do not fit one 80 GB device: the ring is at least two.
    assert lpu["decode_t"][0] >= 2 and lpu["decode_ms_per_token"][0] > 0
    assert "cheapest per token" in capsys.readouterr().out


def test_both_engines_stream_the_same_bytes_at_batch_1(tmp_path):
    """The cost model's decode program reads, per device, what the analytical engine says a
    batch-1 decode step streams: the active parameters (plus a little KV and I/O)."""
    _lpu_or_skip()
    from hyperdex.tools import estimate

    P = _params(_config(tmp_path, MIXTRAL))
    t = 8.0
    ops = layer_ops(P, t * ONE, ONE, ONE, 48 * ONE, prefill=False)
    analytical = 32 * _sum(ops, "weight_bytes") + _sum(
        head_ops(P, t * ONE, ONE, ONE), "weight_bytes"
    )
    e = estimate(
        MIXTRAL,
        num_device=int(t),
        type_device="asic",
        prompt_len=32,
        new_tokens=16,
        max_length=48,
        keep_timeline=False,
    )
    lpu = sum(i.hbm_bytes for i in e.instructions)
    assert lpu == pytest.approx(analytical, rel=0.02)


def test_lpu_prices_a_model_yaml_mixture_as_mixtral(tmp_path):
    _lpu_or_skip()
    from hyperdex.explore.perf.lpu import hf_config

    m = {k.split(".", 1)[1]: v[0] for k, v in load_model("mixtral-8x7b").sweep.fields.items()}
    cfg = hf_config(m, None, 256)
    assert cfg["architectures"] == ["MixtralForCausalLM"]
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"]) == (
        8,
        2,
        14336,
    )
    sys_path = _lpu_system(tmp_path)

    def run(model: Any) -> Any:
        return explore("lpu-asic", model, sys_path, out_dir=None, plots=False, progress=False)

    a, b = run("mixtral-8x7b").results.row(0), run(_config(tmp_path, MIXTRAL)).results.row(0)
    assert a["decode_t"] == b["decode_t"]
    assert a["decode_ms_per_token"] == pytest.approx(b["decode_ms_per_token"], rel=1e-9)
    with pytest.raises(ConfigError, match="gated experts"):
        hf_config(dict(m, gated_mlp=False), None, 256)
