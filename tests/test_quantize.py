"""compile(quantization=...): the options, calibration on our own engine, and the compiled
quantized model against PyTorch running the dequantized weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import compile_model, load_hf_model, load_lpu, make_hf_model

from hyperdex import _core
from hyperdex.errors import ConfigError
from hyperdex.tools.quantization import QuantizationConfig, resolve_quantization

torch = pytest.importorskip("torch")

# The tiny models' layers have 64 or 128 input features: groups of 16 give several per row.
GROUP = 16
PROJ = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


LINEARS = {
    f"blk.{i}.{r}" for i in range(2) for r in ("attn_qkv", "attn_output", "ffn_gate_up", "ffn_down")
}
# (layer, the device region GPTQ names the call after, the HF module whose input it sees)
# Each quantized MATMUL of a layer (region, the HF module it reads the input of) and the
# projections of the same layer GPTQ has quantized before it (sequential within a layer).
TAPS = [
    ("attn_qkv", "self_attn.q_proj", ()),
    ("attn_output", "self_attn.o_proj", ("attn_q", "attn_k", "attn_v")),
    ("ffn_gate_up", "mlp.gate_proj", ("attn_q", "attn_k", "attn_v", "attn_output")),
    (
        "ffn_down",
        "mlp.down_proj",
        ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"),
    ),
]


def _ids(n: int, length: int, seed: int = 0, vocab: int = 512) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, vocab, length)] for _ in range(n)]


# -- the options ------------------------------------------------------------------------------


def test_schemes_by_name() -> None:
    assert resolve_quantization(None) is None
    w4 = resolve_quantization("w4a16")
    assert (w4.bits, w4.group_size, w4.method, w4.sym) == (4, 128, "gptq", True)
    # The presets' GPTQ: act-order over static groups (still in input order) and the mse search.
    assert (w4.desc_act, w4.static_groups, w4.mse, w4.act_group_aware) == (True, True, 2.0, False)
    mine = QuantizationConfig.from_scheme("w4a16", nsamples=8)
    assert mine.nsamples == 8 and mine.desc_act and mine.mse == 2.0 and mine.variant == "w4a16"
    with pytest.raises(ConfigError, match="unknown quantization scheme 'w5a16'"):
        QuantizationConfig.from_scheme("w5a16")
    assert resolve_quantization("w8a16").bits == 8
    assert resolve_quantization("rtn-w4a16").method == "rtn"
    cfg = QuantizationConfig(bits=8, group_size=-1)
    assert resolve_quantization(cfg) is cfg
    assert cfg.scheme == "w8a16" and QuantizationConfig(method="rtn").scheme == "rtn-w4a16"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bits": 3}, "bits must be 4 or 8"),
        ({"bits": True}, "bits must be 4 or 8"),
        ({"group_size": 0}, "group_size must be a positive even number"),
        ({"group_size": 33}, "group_size must be a positive even number"),
        ({"sym": False}, "no zero points"),
        ({"desc_act": True}, "desc_act=True needs static_groups=True"),
        ({"act_group_aware": True, "static_groups": True}, "act_group_aware=True orders whole"),
        ({"mse": 11}, "mse must be 0 (scales from each group's largest weight) or the norm"),
        ({"mse": True}, "mse must be 0"),
        ({"damp_percent": 0.0}, "damp_percent must be a number in (0, 1)"),
        ({"method": "awq"}, "method must be one of"),
        ({"nsamples": 0}, "nsamples must be a positive integer"),
        ({"dataset": [1.5, 2.0]}, "dataset must be None, a text, or token ids"),
        ({"dataset": [[1, 2], "x"]}, "dataset must be None, a text, or token ids"),
    ],
)
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QuantizationConfig(**kwargs)


def test_unknown_scheme_name() -> None:
    with pytest.raises(ConfigError, match="'w4a16', 'w8a16'"):
        resolve_quantization("int4")


# -- compiling --------------------------------------------------------------------------------


def _dequantized(codes: np.ndarray, scales: np.ndarray, bits: int, group: int) -> np.ndarray:
    """The device's weight values, written out independently of the core (the last group is
    shorter when the group size does not divide the inputs)."""
    g = codes.shape[1] if group == -1 else group
    per_col = np.repeat(scales.astype(np.float32), g, axis=1)[:, : codes.shape[1]]
    q = codes.astype(np.float32) - 2 ** (bits - 1)
    return (q * per_col).astype(np.float16)


def _quantized_tensors(folder: str) -> tuple[dict, dict]:
    from hyperdex.formats import ModelFile

    cfg = json.loads((Path(folder) / "ckpt" / "quantized" / "hyperdex_config.json").read_text())
    mf = ModelFile.open(Path(folder) / "ckpt" / "quantized" / "hyperdex_model.bin")
    return cfg, {n: np.array(mf[n]) for n in mf.names}


def _torch_with(
    model, tensors: dict, bits: int, group: int, layers: int, partial: tuple[str, ...] = ()
):
    """The HF model with every quantized projection of its first ``layers`` layers, and the
    ``partial`` ones of the next, replaced by their dequantized weights."""
    with torch.no_grad():
        for i in range(layers + (1 if partial else 0)):
            for short, hf in PROJ.items():
                if i == layers and short not in partial:
                    continue
                name = f"blk.{i}.{short}.weight"
                w = _dequantized(tensors[name], tensors[f"blk.{i}.{short}.scales"], bits, group)
                model.model.layers[i].get_submodule(hf).weight.copy_(
                    torch.tensor(w.astype(np.float32))
                )
    return model


@pytest.fixture(scope="module")
def llama_hf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qhf") / "llama"
    make_hf_model("llama", folder, seed=3)
    return folder


@pytest.mark.parametrize("bits, method", [(4, "gptq"), (8, "gptq"), (4, "rtn")])
def test_quantized_model_equals_pytorch_on_dequantized_weights(
    llama_hf: Path, tmp_path: Path, bits: int, method: str
) -> None:
    q = QuantizationConfig(
        bits=bits, group_size=GROUP, method=method, dataset=_ids(4, 48), nsamples=4, seqlen=48
    )
    path = compile_model(llama_hf, tmp_path, max_length=64, quantization=q)
    cfg, tensors = _quantized_tensors(path)
    assert cfg["quantization"]["bits"] == bits and cfg["quantization"]["method"] == method
    codes = tensors["blk.0.attn_q.weight"]
    assert codes.dtype == np.uint8 and codes.max() < 2**bits and codes.min() >= 0
    assert tensors["blk.0.attn_q.scales"].shape == (codes.shape[0], codes.shape[1] // GROUP)
    assert tensors["tok_embd.weight"].dtype == np.float16  # embeddings stay fp16

    ref = _torch_with(load_hf_model(llama_hf), tensors, bits, GROUP, 2)
    prompt = _ids(1, 20, seed=9)[0]
    lpu = load_lpu(path)
    ours = lpu(torch.tensor([prompt])).logits[0].float().numpy()
    with torch.no_grad():
        want = ref(torch.tensor([prompt])).logits[0].float().numpy()
    # The accuracy suite's tolerance for fp16 devices against fp32 PyTorch.
    assert np.max(np.abs(ours - want) - (2e-2 + 1e-2 * np.abs(want))) <= 0
    # The same top 5, in the same order except where PyTorch's logits tie within tolerance.
    top, top_want = np.argsort(-ours[-1])[:5], np.argsort(-want[-1])[:5]
    assert set(top) == set(top_want)
    assert all(abs(want[-1][a] - want[-1][b]) <= 2e-2 for a, b in zip(top, top_want) if a != b)
    out = lpu.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        hf_out = ref.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0
        )
    assert out[0].tolist() == hf_out[0].tolist()


@pytest.mark.parametrize("group", [GROUP, 48])  # 48: 64 inputs = 48 + a shorter group of 16
def test_quantized_equals_fp16_compile_of_dequantized_weights_bit_for_bit(
    llama_hf: Path, tmp_path: Path, group: int
) -> None:
    """A quantized MATMUL is the fp16 MATMUL over the dequantized values (docs/isa.md)."""
    q = QuantizationConfig(bits=4, group_size=group, method="rtn")
    path = compile_model(llama_hf, tmp_path / "q", max_length=64, quantization=q)
    _, tensors = _quantized_tensors(path)
    assert tensors["blk.0.attn_q.scales"].shape[1] == -(-64 // group)
    twin = tmp_path / "twin"
    model = _torch_with(load_hf_model(llama_hf), tensors, 4, group, 2)
    model.save_pretrained(str(twin))
    twin_path = compile_model(twin, tmp_path / "t", max_length=64)
    prompt = torch.tensor([_ids(1, 24, seed=4)[0]])
    a = load_lpu(path)(prompt).logits.float().numpy()
    b = load_lpu(twin_path)(prompt).logits.float().numpy()
    assert np.array_equal(a, b)

    # and the int4 layers stream at most half the fp16 bytes: 64-input rows of 4 groups
    # are one 32-byte scale line + 32 bytes of codes (the scale line costs more on short rows)
    def layer_bytes(folder: str) -> int:
        mm = json.loads(Path(folder, "config", "memory_map.json").read_text())
        return sum(r["rows"] * r["row_bytes"] for r in mm["regions"] if r["name"] in LINEARS)

    assert layer_bytes(path) <= 0.5 * layer_bytes(twin_path)


def test_calibration_runs_on_our_engine(llama_hf: Path, tmp_path: Path, monkeypatch) -> None:
    """The Hessians GPTQ sees are those of the inputs PyTorch's layers see when everything GPTQ
    quantized before (earlier layers, and earlier projections of the same layer) holds its
    dequantized weights: calibration is sequential across and within layers."""
    seen: dict[str, np.ndarray] = {}
    real = _core.quant.gptq

    def spy(w, h, **kw):
        seen[kw["name"]] = np.array(h, dtype=np.float64)
        return real(w, h, **kw)

    monkeypatch.setattr(_core.quant, "gptq", spy)
    samples = _ids(2, 150, seed=5)  # longer than one prefill chunk: chunks attend to the cache
    q = QuantizationConfig(bits=4, group_size=GROUP, dataset=samples, nsamples=2, seqlen=150)
    path = compile_model(llama_hf, tmp_path, max_length=160, quantization=q)
    _, tensors = _quantized_tensors(path)

    def hessian(model, layer: int, module: str) -> np.ndarray:
        rows = []
        hook = (
            model.model.layers[layer]
            .get_submodule(module)
            .register_forward_hook(lambda m, i, o: rows.append(i[0][0].detach().double().numpy()))
        )
        with torch.no_grad():
            for s in samples:
                model(torch.tensor([s]))
        hook.remove()
        x = np.concatenate(rows)
        return 2 * x.T @ x / len(x)

    fp16 = load_hf_model(llama_hf).half().float()  # the fp16 weights the device holds
    for layer in (0, 1):
        for short, module, before in TAPS:
            model = _torch_with(
                load_hf_model(llama_hf).half().float(), tensors, 4, GROUP, layer, before
            )
            want = hessian(model, layer, module)
            got = seen[f"blk.{layer}.{short}"]
            err = np.abs(got - want).max()
            assert err <= 2e-3 * np.abs(want).max(), (layer, short)
            if layer or before:  # and not what the fp16 model's layer would see
                assert err < 0.5 * np.abs(got - hessian(fp16, layer, module)).max(), (layer, short)


def test_scheme_recorded_and_shown(llama_hf: Path, tmp_path: Path) -> None:
    from hyperdex.transformers import AutoConfig

    q = QuantizationConfig(bits=4, group_size=GROUP, method="rtn")
    path = compile_model(llama_hf, tmp_path, max_length=64, quantization=q)
    info = json.loads((Path(path) / "compile.json").read_text())
    assert info["quantization"]["scheme"] == "rtn-w4a16"
    assert info["quantization"]["group_size"] == GROUP
    config = AutoConfig.from_pretrained(path)
    assert config.quantization == "rtn-w4a16"
    assert config.quantization_config["bits"] == 4
    assert "quantization='rtn-w4a16'" in repr(config)
    fp16 = AutoConfig.from_pretrained(compile_model(llama_hf, tmp_path / "fp16", max_length=64))
    assert fp16.quantization is None and fp16.quantization_config is None


def test_fast_compile_requantizes_only_when_inputs_change(llama_hf: Path, tmp_path: Path) -> None:
    from hyperdex.tools import AutoCompiler

    def run(dataset):
        c = AutoCompiler(prefix=tmp_path)
        q = QuantizationConfig(bits=4, group_size=GROUP, dataset=dataset, nsamples=2, seqlen=32)
        path = c.compile(
            str(llama_hf), max_length=64, quantization=q, fast_compile=True, progress=False
        )
        qfile = Path(path) / "ckpt" / "quantized" / "hyperdex_model.bin"
        return c.last_quantization, qfile.read_bytes()

    stats1, first = run(_ids(2, 32, seed=1))
    assert stats1  # quantized
    stats2, second = run(_ids(2, 32, seed=1))
    assert stats2 == {} and second == first  # up to date: not quantized again
    stats3, third = run(_ids(2, 32, seed=2))
    assert stats3 and third != first  # other calibration data: quantized again


def test_ring_split_must_keep_whole_groups(llama_hf: Path, tmp_path: Path) -> None:
    """On a ring the attention output's 64 inputs split 32 + 32: groups of 48 would be cut."""
    q = QuantizationConfig(bits=4, group_size=48, method="rtn")
    with pytest.raises(
        ConfigError, match=r"attn_output.weight: 2 devices split its 64 inputs .* group size 48"
    ):
        compile_model(llama_hf, tmp_path, max_length=64, num_device=2, quantization=q)


def test_calibration_token_ids_checked(llama_hf: Path, tmp_path: Path) -> None:
    q = QuantizationConfig(bits=4, group_size=GROUP, dataset=[[1, 2, 99999]], seqlen=3)
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        compile_model(llama_hf, tmp_path, max_length=64, quantization=q)
    short = QuantizationConfig(bits=4, group_size=GROUP, dataset=list(range(10)), seqlen=32)
    with pytest.raises(ConfigError, match="ids has 10 tokens, fewer than one calibration sample"):
        compile_model(llama_hf, tmp_path, max_length=64, quantization=short)


def test_no_tokenizer_for_default_text(llama_hf: Path, tmp_path: Path) -> None:
    q = QuantizationConfig(bits=4, group_size=GROUP)
    with pytest.raises(ConfigError, match="has no tokenizer"):
        compile_model(llama_hf, tmp_path, max_length=64, quantization=q)


def test_hybrid_mode_refuses_quantized(llama_hf: Path, tmp_path: Path) -> None:
    from hyperdex.transformers import AutoModelForCausalLM

    q = QuantizationConfig(bits=4, group_size=GROUP, method="rtn")
    path = compile_model(llama_hf, tmp_path, max_length=64, quantization=q)
    with pytest.raises(ConfigError, match="hybrid mode prefills with the fp16"):
        AutoModelForCausalLM.from_pretrained(path, device_map={"gpu": 0, "lpu": 1})


def test_converter_writes_quantized(llama_hf: Path, tmp_path: Path) -> None:
    from hyperdex.formats import ModelFile
    from hyperdex.tools import AutoModelConverter

    conv = AutoModelConverter(
        llama_hf, quantization=QuantizationConfig(group_size=GROUP, method="rtn")
    )
    out = conv.save_pretrained(tmp_path / "out", progress=False)
    mf = ModelFile.open(out / "hyperdex_model.bin")
    assert mf["blk.1.ffn_down.weight"].dtype == np.uint8
    assert json.loads((out / "hyperdex_config.json").read_text())["quantization"]["bits"] == 4
    assert not (out / ".fp16-conversion").exists()
    shutil.rmtree(out)
