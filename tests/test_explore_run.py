"""End to end: seed 004's first example as one command, the outputs it lays out, and the LPU
path through the instruction-level cost model (one source of truth)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import yaml

from hyperdex.explore import explore
from hyperdex.explore.cli import main
from hyperdex.explore.inputs.loader import PRESETS


def test_hdex_explore_tpuv4_gpt3_writes_seed_004_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["-hw", "tpuv4", "-m", "gpt3", "-q"]) == 0
    out = tmp_path / "outputs" / "tpuv4"
    for name in (
        "tpuv4.csv",
        "tpuv4.pkl",
        "gpt3.csv",
        "gpt3.pkl",
        "gpt3_pareto.png",
        "gpt3_roofline.png",
    ):
        assert (out / name).stat().st_size > 0, name
    with open(out / "gpt3.pkl", "rb") as f:
        cols = pickle.load(f)
    assert cols["feasible"].all()
    # Batching buys throughput per chip and costs latency per token.
    batch = cols["workload.batch"]
    assert (
        cols["decode_usd_per_mtok"][batch == 1024].min()
        < cols["decode_usd_per_mtok"][batch == 1].min()
    )
    header = (out / "gpt3.csv").read_text().splitlines()[0].split(",")
    assert {
        "decode_ms_per_token",
        "tokens_per_s",
        "decode_usd_per_mtok",
        "ttft_ms",
        "decode_t",
        "decode_p",
        "prefill_t",
    } <= set(header)
    assert "cheapest per token" in capsys.readouterr().out


def test_cli_rejects_bad_input_with_exit_code_1(tmp_path, capsys):
    assert main(["-hw", "tpuv5", "-m", "gpt3", "-q", "-o", str(tmp_path)]) == 1
    assert "did you mean 'tpuv4'" in capsys.readouterr().err


def test_prefill_and_decode_optima_are_chosen_separately():
    r = explore("tpuv4", "gpt3", out_dir=None, plots=False, progress=False)
    res = r.results
    assert np.any((res["prefill_t"] != res["decode_t"]) | (res["prefill_p"] != res["decode_p"]))


def _lpu_or_skip():
    pytest.importorskip("hyperdex._core")
    from hyperdex.tools import estimate

    return estimate


def test_lpu_designs_go_through_the_cost_model():
    estimate = _lpu_or_skip()
    r = explore("lpu-asic", "opt-1.3b", out_dir=None, plots=False, progress=False)
    row = r.results.row(0)
    assert row["engine"] == "cost model"
    from hyperdex.explore.inputs.loader import load_model
    from hyperdex.explore.perf.lpu import CostModelCache, hf_config

    m = {k.split(".", 1)[1]: v[0] for k, v in load_model("opt-1.3b").sweep.fields.items()}
    cache = CostModelCache()
    try:
        preset = cache.preset_file({"preset": "asic"})

        def est(t):
            return estimate(
                hf_config(m, None, 256),
                num_device=t,
                type_device=preset,
                prompt_len=128,
                new_tokens=128,
                max_length=256,
                keep_timeline=False,
            )

        decode, prefill = est(int(row["decode_t"])), est(int(row["prefill_t"]))
    finally:
        cache.close()
    assert row["decode_ms_per_token"] == pytest.approx(decode.decode_ms_per_token, rel=1e-9)
    assert row["ttft_ms"] == pytest.approx(prefill.prefill_ms, rel=1e-9)
    assert row["bandwidth_utilization"] == pytest.approx(decode.bandwidth_utilization)


def test_lpu_cost_model_results_are_cached_per_distinct_design(tmp_path):
    _lpu_or_skip()
    hw = yaml.safe_load((PRESETS / "hardware" / "u55c.yaml").read_text())
    hw["device"]["clock_mhz"] = [200.0, 220.0]  # two device designs
    hw["server"]["packages"] = [4, 8]  # a server choice: the same instruction streams
    hw_path = tmp_path / "hw.yaml"
    hw_path.write_text(yaml.safe_dump(hw))
    system = {
        "workload": {"batch": 1, "prompt_len": 32, "gen_len": 16},
        "mapping": {"max_chips": 2, "objective": ["latency", "tco"], "pipeline_parallel": 1},
    }
    sys_path = tmp_path / "s.yaml"
    sys_path.write_text(yaml.safe_dump(system))
    r = explore(hw_path, "opt-1.3b", sys_path, out_dir=None, plots=False, progress=False)
    assert len(r.results) == 2 * 2 * 2
    assert r.results["feasible"].all()
    assert r.cost_model_calls == 2 * 2  # (2 clocks) x (1 or 2 devices), nothing more
    res = r.results
    for objective in ("latency", "tco"):
        sel = res["mapping.objective"] == objective
        fast, slow = (
            sel & (res["device.clock_mhz"] == 220.0),
            sel & (res["device.clock_mhz"] == 200.0),
        )
        assert res["decode_ms_per_token"][fast].max() <= res["decode_ms_per_token"][slow].min()


def test_lpu_rejects_batches_with_a_reason(tmp_path):
    _lpu_or_skip()
    sys_path = tmp_path / "s.yaml"
    sys_path.write_text(yaml.safe_dump({"workload": {"batch": 8}}))
    with pytest.raises(Exception, match="decodes at batch 1"):
        explore("u55c", "opt-1.3b", sys_path, out_dir=None, progress=False)


def test_validation_table_meets_the_documented_error():
    _lpu_or_skip()
    from hyperdex.explore.validation import mape, validate

    cases = validate()
    assert len(cases) >= 10
    lpu = next(c for c in cases if c.name.startswith("OPT-1.3B, 1 x LPU"))
    assert abs(lpu.error) < 0.10  # the LPU paper's 1.25 ms/token within 10%
    assert mape(cases) < 12.0  # docs/explorer-validation.md states the figure


def test_explore_without_matplotlib_refuses_before_writing(tmp_path, monkeypatch):
    from hyperdex import extras

    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m != "matplotlib" and real(m))
    with pytest.raises(extras.MissingExtraError, match=r"hyperdex\[explore\]") as err:
        explore("tpuv4", "gpt3", out_dir=tmp_path / "out", progress=False)
    assert err.value.missing == ["matplotlib"] and "plots=False" in str(err.value)
    assert not (tmp_path / "out").exists()
    # without plots, matplotlib is not needed
    explore("tpuv4", "gpt3", out_dir=tmp_path / "out", plots=False, progress=False)
    assert (tmp_path / "out" / "tpuv4" / "gpt3.csv").exists()
