"""The cost model from Python: presets as data, estimate() from a config alone, the physical
floors for every preset and architecture, the LPU paper's figures, the passes (outputs
identical, time not worse), and what the runtime reports (last_stats, traces, objdump)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hyperdex import _core
from hyperdex.arch.registry import model_traits
from hyperdex.errors import CapacityError, ConfigError
from hyperdex.presets import available_presets, load_preset, unsourced_fields
from hyperdex.tools import estimate
from hyperdex.tools.estimator import main as estimate_main
from hyperdex.tools.passes import PASSES, pass_options

# -- model configs, written out as a config.json would be ------------------------------------

OPT_SIZES = {  # hidden, layers, heads, ffn (the facebook/opt-* configs)
    "opt-125m": (768, 12, 12, 3072),
    "opt-1.3b": (2048, 24, 32, 8192),
    "opt-2.7b": (2560, 32, 32, 10240),
    "opt-6.7b": (4096, 32, 32, 16384),
    "opt-13b": (5120, 40, 40, 20480),
    "opt-66b": (9216, 64, 72, 36864),
}


def opt_config(name: str) -> dict:
    hidden, layers, heads, ffn = OPT_SIZES[name]
    return {
        "architectures": ["OPTForCausalLM"],
        "model_type": "opt",
        "_name_or_path": f"facebook/{name}",
        "vocab_size": 50272,
        "max_position_embeddings": 2048,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "ffn_dim": ffn,
        "word_embed_proj_dim": hidden,
        "do_layer_norm_before": True,
        "activation_function": "relu",
        "enable_bias": True,
        "layer_norm_elementwise_affine": True,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
    }


# One realistic config per supported architecture shape (sizes of public models).
ARCH_CONFIGS = {
    "gpt2-medium": {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 1024,
        "n_layer": 24,
        "n_head": 16,
        "activation_function": "gelu_new",
    },
    "opt-1.3b": opt_config("opt-1.3b"),
    "opt-350m": {  # post-norm blocks, a 512-wide embedding projected to 1024
        **opt_config("opt-125m"),
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "ffn_dim": 4096,
        "word_embed_proj_dim": 512,
        "do_layer_norm_before": False,
    },
    "llama-3.2-1b": {  # GQA, tied embeddings, llama3 rope scaling
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": True,
    },
    "mistral-7b": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    "qwen2-0.5b": {  # Q/K/V biases
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
}


def floors_from_config(
    config: dict, preset: dict, devices: int = 1, prompt: int = 1
) -> tuple[float, float]:
    """(bandwidth floor, compute floor) in ms for one decode token (or a ``prompt`` of that
    many tokens, whose logits only the last row needs), from the architecture's shapes alone:
    every weight matrix streams once at peak bandwidth, every MAC at full use. Independent of
    the cost model's own accounting."""
    _, _, m = model_traits(config)
    H, hd, ff, V = m.hidden_size, m.head_dim, m.intermediate_size, m.vocab_size
    q, kv = m.num_heads * hd, m.num_kv_heads * hd
    per_layer = (q + 2 * kv) * H + H * q + (3 if m.gated_mlp else 2) * H * ff
    body = m.num_layers * per_layer
    if m.embed_dim != H:
        body += 2 * H * m.embed_dim
    head = V * m.embed_dim
    # The ring shares every matrix (sizes that divide; the configs used here do).
    body, head = body / devices, head / devices
    bandwidth_ms = (body + head) * 2 / (preset["hbm_bandwidth_gbps"] * 1e9) * 1e3
    macs_per_s = preset["mac_trees"] * preset["mac_lanes"] * preset["clock_mhz"] * 1e6
    return bandwidth_ms, (prompt * body + head) / macs_per_s * 1e3


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    """Each config written as a HF folder would hold it."""
    root = tmp_path_factory.mktemp("configs")
    out = {}
    for name, cfg in {**ARCH_CONFIGS, **{n: opt_config(n) for n in OPT_SIZES}}.items():
        folder = root / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(cfg))
        out[name] = folder
    return out


# -- presets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available_presets())
def test_packaged_presets_source_every_number(name: str) -> None:
    preset = load_preset(name)
    assert unsourced_fields(preset) == [], f"{name}: numbers without a source"
    core = _core.DevicePreset()
    from hyperdex.presets import device_preset

    core = device_preset(preset)
    core.validate()
    # The matrix engine of a board is sized to its bandwidth (DESIGN.md): within 10% of it.
    macs = preset["mac_trees"] * preset["mac_lanes"] * preset["clock_mhz"] * 1e6
    assert 0.85 <= 2 * macs / (preset["hbm_bandwidth_gbps"] * 1e9) <= 1.5


def test_preset_cost_fields_are_checked(tmp_path: Path) -> None:
    base = load_preset("u55c")

    def write(**change: object) -> Path:
        data = {**base, **change}
        data = {k: v for k, v in data.items() if v is not None}
        path = tmp_path / "p.json"
        path.write_text(json.dumps(data))
        return path

    with pytest.raises(ConfigError, match="hbm_efficiency"):
        load_preset(write(hbm_efficiency=1.5))
    with pytest.raises(ConfigError, match="ring_latency_ns"):
        load_preset(write(ring_latency_ns=-1.0))
    with pytest.raises(ConfigError, match="lacks the field 'run_overhead_us'"):
        load_preset(write(run_overhead_us=None))
    with pytest.raises(ConfigError, match="sources names no field: hbm_latncy"):
        load_preset(write(sources={"hbm_latncy": "typo"}))
    ok = load_preset(write(hbm_latency_ns=0.0, run_overhead_us=0.0))  # an ideal design point
    assert ok["hbm_latency_ns"] == 0.0
    # A user's preset file drives estimate() like a packaged one.
    faster = load_preset(write(name="u55c-2x", hbm_bandwidth_gbps=920.0, mac_trees=128))
    assert faster["hbm_bandwidth_gbps"] == 920.0


# -- estimate() from a config alone -----------------------------------------------------------


def test_estimate_reads_only_the_config(configs: dict[str, Path]) -> None:
    e = estimate(configs["opt-1.3b"] / "config.json", type_device="u55c", prompt_len=64)
    assert e.architecture == "OPTForCausalLM" and e.num_device == 1
    assert e.decode_ms_per_token > e.device_decode_ms_per_token > e.bandwidth_floor_ms
    assert e.tokens_per_s == pytest.approx(1000.0 / e.decode_ms_per_token)
    assert e.prefill_ms > 0 and e.time_to_first_token_ms == e.prefill_ms
    assert 0 < e.bandwidth_utilization <= 1
    # The breakdown covers the decode program: every layer's four matrix streams, the head.
    names = [i.region for i in e.instructions if i.opcode == "MATMUL"]
    assert len(names) == 24 * 4 + 1 and names[-1] == "tok_embd"
    assert sum(i.hbm_bytes for i in e.instructions) == pytest.approx(
        e.decode_hbm_bytes_per_token, rel=0.02
    )
    assert e.instructions[-1].start_us + e.instructions[-1].time_us == pytest.approx(
        max(i.start_us + i.time_us for i in e.instructions)
    )
    assert "MATMUL ffn_down" in e.role_table() and "tok_embd" in e.table(top=5)
    json.dumps(e.to_dict())  # plain data
    # The same from the folder and from the dict.
    again = estimate(configs["opt-1.3b"], prompt_len=64)
    assert again.decode_ms_per_token == e.decode_ms_per_token
    assert estimate(opt_config("opt-1.3b"), prompt_len=64).decode_ms_per_token == pytest.approx(
        e.decode_ms_per_token
    )


def test_estimate_rejects_what_cannot_run(configs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="power of two"):
        estimate(configs["opt-1.3b"], num_device=3)
    with pytest.raises(ConfigError, match="quantization must be None"):
        estimate(configs["opt-1.3b"], quantization="int3")
    with pytest.raises(ConfigError, match="exceed max_length"):
        estimate(configs["opt-1.3b"], prompt_len=2000, new_tokens=100)
    with pytest.raises(CapacityError, match="devices"):  # 132 GB of weights, one 16 GiB board
        estimate(configs["opt-66b"], type_device="u55c")
    with pytest.raises(ConfigError, match="did you mean 'reorder'"):
        estimate(configs["opt-1.3b"], passes={"reoder": False})


def test_quantized_estimate_streams_codes_and_scales(configs: dict[str, Path]) -> None:
    """W4A16 streams about a quarter of the fp16 weight bytes (codes + one fp16 scale per 128),
    W8A16 about half. Decode gets faster until the MAC trees, sized for the fp16 stream,
    become the bound (docs/cost-model.md): int4 is then no faster than int8."""
    fp16 = estimate(configs["opt-1.3b"], type_device="asic")
    w4 = estimate(configs["opt-1.3b"], type_device="asic", quantization="w4a16")
    w8 = estimate(configs["opt-1.3b"], type_device="asic", quantization="w8a16")
    assert w4.quantization == "w4a16" and fp16.quantization is None
    assert "w4a16 weights" in w4.summary() and "fp16 weights" in fp16.summary()
    # The embeddings (tied LM head) stay fp16: 0.1 GB of OPT-1.3B's 2.6 GB.
    assert 0.25 < w4.weight_bytes_per_token / fp16.weight_bytes_per_token < 0.35
    assert 0.5 < w8.weight_bytes_per_token / fp16.weight_bytes_per_token < 0.6
    assert w4.device_decode_ms_per_token <= w8.device_decode_ms_per_token
    assert w8.device_decode_ms_per_token < fp16.device_decode_ms_per_token


# -- physics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", available_presets())
@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
@pytest.mark.parametrize("passes", ["all", "none"])
def test_no_estimate_beats_the_floors(configs, preset: str, arch: str, passes: str) -> None:
    data = load_preset(preset)
    for devices in (1, 2, 4):  # as many as the model needs on this preset
        try:
            e = estimate(
                configs[arch],
                num_device=devices,
                type_device=preset,
                prompt_len=32,
                new_tokens=4,
                passes=passes,
            )
            break
        except CapacityError:
            continue
    bandwidth_ms, compute_ms = floors_from_config(ARCH_CONFIGS[arch], data, devices)
    assert e.device_decode_ms_per_token >= bandwidth_ms
    assert e.device_decode_ms_per_token >= compute_ms
    assert e.bandwidth_floor_ms == pytest.approx(bandwidth_ms, rel=1e-6)
    # A 32-token prompt streams every weight at least once and does 32 tokens of MACs.
    _, prompt_ms = floors_from_config(ARCH_CONFIGS[arch], data, devices, prompt=32)
    assert e.prefill_ms >= max(bandwidth_ms, prompt_ms)
    # No faster than the HBM sustains (small parameter vectors aside).
    assert e.bandwidth_utilization <= data["hbm_efficiency"] * 1.01


def test_tensor_parallel_devices_share_the_floor(configs) -> None:
    data = load_preset("u55c")
    e = estimate(configs["opt-13b"], num_device=2, type_device="u55c", new_tokens=8)
    bandwidth_ms, compute_ms = floors_from_config(opt_config("opt-13b"), data, devices=2)
    assert e.device_decode_ms_per_token >= max(bandwidth_ms, compute_ms)
    ring = [i for i in e.instructions if i.opcode == "ALLREDUCE"]
    assert len(ring) == 2 * 40 and all(i.bound == "ring" for i in ring)
    # Chunked all-reduces overlap the MATMULs feeding them: prefill gets faster.
    unchunked = estimate(
        configs["opt-13b"], num_device=2, new_tokens=8, passes={"chunk_ring": False}
    )
    assert e.prefill_ms < unchunked.prefill_ms


def test_asic_matches_the_lpu_paper(configs) -> None:
    """LPU paper (arXiv 2408.07326): OPT-1.3B at 1.25 ms/token on one ASIC (the calibration
    point) and OPT-66B at 20.9 ms/token on two (a check of it)."""
    e = estimate(configs["opt-1.3b"], type_device="asic")
    assert abs(e.decode_ms_per_token - 1.25) / 1.25 <= 0.10, e.decode_ms_per_token
    big = estimate(configs["opt-66b"], num_device=2, type_device="asic")
    assert abs(big.decode_ms_per_token - 20.9) / 20.9 <= 0.10, big.decode_ms_per_token


@pytest.mark.parametrize(
    "name, devices", [("opt-1.3b", 1), ("opt-2.7b", 1), ("opt-6.7b", 1), ("opt-13b", 2)]
)
def test_u55c_streams_opt_at_85_percent(configs, name: str, devices: int) -> None:
    e = estimate(configs[name], num_device=devices, type_device="u55c")
    assert e.bandwidth_utilization >= 0.85, e.summary()


@pytest.mark.parametrize("preset", ["u55c", "asic"])
@pytest.mark.parametrize("arch", ["opt-1.3b", "llama-3.2-1b", "qwen2-0.5b"])
def test_each_pass_saves_time(configs, preset: str, arch: str) -> None:
    """All passes together are faster, and no pass costs more than 0.1% (separate Q/K/V
    MATMULs let ROPE start before V's stream ends, which can win back a hair of what the
    fused stream saves)."""
    on = estimate(configs[arch], type_device=preset, new_tokens=16)
    off = estimate(configs[arch], type_device=preset, new_tokens=16, passes="none")
    assert on.device_decode_ms_per_token < off.device_decode_ms_per_token
    for name in PASSES:
        without = estimate(configs[arch], type_device=preset, new_tokens=16, passes={name: False})
        assert on.device_decode_ms_per_token <= without.device_decode_ms_per_token * 1.001, name


# -- the passes keep outputs identical --------------------------------------------------------

PASS_VARIANTS = [None, "none", *({name: False} for name in PASSES)]


@pytest.mark.parametrize("arch", ["gpt2", "opt", "opt350", "llama", "qwen2"])
def test_passes_keep_outputs_identical(tmp_path: Path, arch: str) -> None:
    import helpers

    hf = tmp_path / "hf"
    helpers.make_hf_model(arch, hf, seed=3)
    prompt = np.array([[5, 17, 42, 7, 99, 3, 250, 11]], dtype=np.int64)
    reference = None
    listings = set()
    for i, passes in enumerate(PASS_VARIANTS):
        path = helpers.compile_model(hf, tmp_path / f"c{i}", max_length=64, passes=passes)
        info = json.loads((Path(path) / "compile.json").read_text())
        assert info["passes"] == pass_options(passes)
        model = helpers.load_lpu(path)
        logits = model(prompt).logits
        tokens = model.generate(prompt, max_new_tokens=6, do_sample=False)
        listings.add((Path(path) / "inst" / "decode.lst").read_text().split("\n", 1)[1])
        if reference is None:
            reference = (logits, tokens)
            continue
        assert np.array_equal(logits.view(np.uint32), reference[0].view(np.uint32)), passes
        assert np.array_equal(tokens, reference[1]), passes
    # The passes did change the programs (all on, all off, and most single ones differ).
    assert len(listings) >= 4


def test_fused_gate_up_is_one_region(tmp_path: Path) -> None:
    import helpers

    hf = tmp_path / "hf"
    helpers.make_hf_model("llama", hf)
    on = helpers.compile_model(hf, tmp_path / "on", max_length=64)
    off = helpers.compile_model(
        hf, tmp_path / "off", max_length=64, passes={"fuse_gate_up": False, "fuse_qkv": False}
    )
    names_on = {
        r["name"] for r in json.loads((Path(on) / "config/memory_map.json").read_text())["regions"]
    }
    names_off = {
        r["name"] for r in json.loads((Path(off) / "config/memory_map.json").read_text())["regions"]
    }
    assert "blk.0.ffn_gate_up" in names_on and "blk.0.ffn_gate" not in names_on
    assert {"blk.0.ffn_gate", "blk.0.ffn_up", "blk.0.attn_q", "blk.0.attn_v"} <= names_off
    assert "+glu" in (Path(on) / "inst" / "decode.lst").read_text()


def test_fast_compile_redoes_map_and_instgen_when_passes_change(tmp_path: Path) -> None:
    import helpers

    hf = tmp_path / "hf"
    helpers.make_hf_model("llama", hf)
    path = Path(helpers.compile_model(hf, tmp_path / "c", max_length=64))
    before = (path / "inst" / "decode.bin").read_bytes()
    helpers.compile_model(
        hf, tmp_path / "c", max_length=64, fast_compile=True, passes={"reorder": False}
    )
    after = (path / "inst" / "decode.bin").read_bytes()
    assert after != before and b"PREFETCH" not in (path / "inst" / "decode.lst").read_bytes()
    assert json.loads((path / "compile.json").read_text())["passes"]["reorder"] is False


# -- run time: last_stats, traces, objdump ----------------------------------------------------


@pytest.fixture(scope="module")
def compiled_llama(tmp_path_factory) -> str:
    import helpers

    root = tmp_path_factory.mktemp("stats")
    helpers.make_hf_model("llama", root / "hf")
    return helpers.compile_model(root / "hf", root / "out", max_length=128)


def test_generate_reports_estimated_board_time(compiled_llama: str, tmp_path: Path) -> None:
    import helpers

    model = helpers.load_lpu(compiled_llama)
    assert model.last_stats is None
    prompt = np.array([[1, 2, 3, 4, 5, 6, 7]])
    model.generate(prompt, max_new_tokens=5, do_sample=False)
    s = model.last_stats
    assert s.backend == "emu" and s.device == "u55c" and s.num_device == 1
    assert s.new_tokens == 5 and s.decode_runs == 4  # the first new token comes from prefill
    assert s.estimated_decode_ms_per_token > 0 and s.estimated_time_to_first_token_ms > 0
    # The same runs priced directly: prefill of 7 tokens, decodes at positions 7..10.
    from hyperdex.presets import device_preset

    preset = device_preset(load_preset("u55c"))
    inst = Path(compiled_llama) / "inst"
    prof = _core.cost.Profiler(
        _core.load_program(str(inst / "prefill.bin")),
        _core.load_program(str(inst / "decode.bin")),
        preset,
    )
    prof.prefill(0, 7)
    prof.decode_range(7, 4)
    per_token = (prof.totals.decode_ns / 4 + preset.run_overhead_us * 1000) / 1e6
    assert s.estimated_decode_ms_per_token == pytest.approx(per_token)
    assert s.trace is None and "ms/token" in str(s)
    # generate_yield and the forward call report too.
    list(model.generate_yield(prompt, max_new_tokens=3))
    assert model.last_stats.new_tokens == 3
    model(prompt)
    assert model.last_stats.prefill_runs == 1 and model.last_stats.decode_runs == 0


def test_profile_writes_a_chrome_trace(
    compiled_llama: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import helpers

    model = helpers.load_lpu(compiled_llama)
    prompt = np.array([[1, 2, 3]])
    target = tmp_path / "run.json"
    model.generate(prompt, max_new_tokens=4, profile=str(target))
    assert model.last_stats.trace == str(target)
    trace = json.loads(target.read_text())
    events = trace["traceEvents"]
    threads = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert {"HBM stream", "matrix engine", "vector engine", "ring link", "runs"} <= threads
    spans = [e for e in events if e.get("ph") == "X"]
    assert {e["name"] for e in spans if e["tid"] == 4} >= {"prefill 0..2", "decode @3", "decode @5"}
    assert any(e["name"].startswith("MATMUL blk.0.") for e in spans)
    assert all(e["dur"] >= 0 for e in spans)
    # The environment variable does the same, into a folder.
    monkeypatch.setenv("HYPERDEX_PROFILE", str(tmp_path))
    model.generate(prompt, max_new_tokens=2)
    written = Path(model.last_stats.trace)
    assert written.parent == tmp_path and json.loads(written.read_text())["traceEvents"]
    monkeypatch.setenv("HYPERDEX_PROFILE", "0")
    model.generate(prompt, max_new_tokens=2)
    assert model.last_stats.trace is None


def test_objdump_shows_estimated_cycles(compiled_llama: str) -> None:
    from hyperdex.tools.objdump import listing

    text = listing(Path(compiled_llama))
    instructions = [line for line in text.splitlines() if line and not line.startswith(";")]
    assert instructions and all("cycles" in line for line in instructions)
    assert "estimated on u55c" in text and "decode at position 0" in text
    later = listing(Path(compiled_llama), position=100)
    assert "decode at position 100" in later
    assert "cycles" not in listing(Path(compiled_llama), cycles=False)
    single = listing(Path(compiled_llama) / "inst" / "decode.bin", type_device="asic")
    assert "estimated on asic" in single


def test_hdex_estimate_prints_a_table(configs, tmp_path: Path, capsys) -> None:
    trace = tmp_path / "t.json"
    code = estimate_main(
        [str(configs["opt-1.3b"]), "--type-device", "asic", "--trace", str(trace), "--top", "5"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "ms/token" in out and "MATMUL ffn_down" in out and "% of peak" in out
    assert json.loads(trace.read_text())["traceEvents"]
    assert estimate_main([str(configs["opt-1.3b"]), "--json", "--no-reorder"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passes"]["reorder"] is False and data["decode_ms_per_token"] > 0
    assert estimate_main([str(configs["opt-1.3b"]), "--type-device", "nope"]) == 1
    assert "unknown device type" in capsys.readouterr().err


def test_hdex_estimate_is_installed() -> None:
    import shutil
    import subprocess

    exe = shutil.which("hdex-estimate")
    if exe is None:
        pytest.skip("hdex-estimate is not on PATH (package not installed with scripts)")
    done = subprocess.run(
        [exe, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0 and "--no-reorder" in done.stdout
