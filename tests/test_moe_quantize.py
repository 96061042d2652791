"""GPTQ of a mixture of experts (issue 17): each expert is quantized on the Hessian of the
inputs of the tokens the router sent to it, as PyTorch's forward pass routes them; an expert
no calibration token reaches falls back to RTN with a warning naming it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import compile_model, load_hf_model, load_lpu, randomize

from hyperdex import _core
from hyperdex.tools.quantization import QuantizationConfig

torch = pytest.importorskip("torch")

GROUP = 16
EXPERTS, K = 6, 2
ATTN = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
}


def _mixtral() -> Any:
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=317,
        hidden_size=64,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=EXPERTS,
        num_experts_per_tok=K,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )


@pytest.fixture(scope="module")
def mixtral_hf(tmp_path_factory) -> Path:
    from transformers import MixtralForCausalLM

    folder = tmp_path_factory.mktemp("moeq") / "mixtral"
    config = _mixtral()
    config.architectures = ["MixtralForCausalLM"]
    model = MixtralForCausalLM(config).eval()
    randomize(model, seed=3, std=0.1)
    model.save_pretrained(str(folder))
    return folder


def _ids(n: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, 317, length)] for _ in range(n)]


def _quantized(path: str) -> dict[str, np.ndarray]:
    from hyperdex.formats import ModelFile

    mf = ModelFile.open(Path(path) / "ckpt" / "quantized" / "hyperdex_model.bin")
    return {n: np.array(mf[n]) for n in mf.names}


def _dequantized(tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    codes = tensors[name + ".weight"]
    return _core.quant.dequantize(codes, tensors[name + ".scales"], 4, GROUP)


def _spy(monkeypatch) -> dict[str, np.ndarray]:
    seen: dict[str, np.ndarray] = {}
    real = _core.quant.gptq

    def spy(w, h, **kw):
        seen[kw["name"]] = np.array(h, dtype=np.float64)
        return real(w, h, **kw)

    monkeypatch.setattr(_core.quant, "gptq", spy)
    return seen


def test_each_expert_gets_the_hessian_of_the_tokens_routed_to_it(
    mixtral_hf: Path, tmp_path: Path, monkeypatch
) -> None:
    seen = _spy(monkeypatch)
    samples = _ids(3, 40, seed=5)
    q = QuantizationConfig(bits=4, group_size=GROUP, dataset=samples, nsamples=3, seqlen=40)
    path = compile_model(mixtral_hf, tmp_path, max_length=64, quantization=q)
    tensors = _quantized(path)
    assert tensors["blk.0.ffn_gate.3.weight"].dtype == np.uint8
    assert tensors["blk.0.ffn_router.weight"].dtype == np.float16  # the router stays fp16

    # PyTorch with layer 0's attention holding its dequantized weights (GPTQ quantized it
    # before the experts): the experts' input and the router's picks for every token.
    model = load_hf_model(mixtral_hf).half().float()
    layer = model.model.layers[0]
    with torch.no_grad():
        for short, module in ATTN.items():
            w = _dequantized(tensors, f"blk.0.{short}")
            layer.get_submodule(module).weight.copy_(torch.tensor(w.astype(np.float32)))
    rows: list[np.ndarray] = []
    hook = layer.post_attention_layernorm.register_forward_hook(
        lambda m, i, o: rows.append(o[0].detach().double().numpy())
    )
    with torch.no_grad():
        for s in samples:
            model(torch.tensor([s]))
    hook.remove()
    y = np.concatenate(rows)
    router = layer.mlp.gate.weight.detach().double().numpy()
    picks = np.argsort(-(y @ router.T), axis=1, kind="stable")[:, :K]
    for e in range(EXPERTS):
        x = y[(picks == e).any(axis=1)]
        assert len(x), f"expert {e} of layer 0 got no calibration token"
        want = 2 * x.T @ x / len(x)
        got = seen[f"blk.0.ffn_gate_up_exps[{e}]"]
        # Not the Hessian of all tokens: the routing matters.
        everyone = 2 * y.T @ y / len(y)
        err = np.abs(got - want).max()
        assert err <= 5e-3 * np.abs(want).max(), e
        assert err < 0.2 * np.abs(got - everyone).max(), e
    assert {f"blk.{i}.ffn_down_exps[{e}]" for i in (0, 1) for e in range(EXPERTS)} <= set(seen)

    # The quantized mixture still computes the model: logits near the fp32 model's.
    prompt = torch.tensor([_ids(1, 16, seed=9)[0]])
    ours = load_lpu(path)(prompt).logits[0].float().numpy()
    with torch.no_grad():
        want_logits = load_hf_model(mixtral_hf)(prompt).logits[0].float().numpy()
    rel = np.linalg.norm(ours - want_logits) / np.linalg.norm(want_logits)
    assert rel < 0.75, rel


def test_an_expert_no_token_reaches_falls_back_to_rtn_with_a_warning(
    mixtral_hf: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    seen = _spy(monkeypatch)
    # Two tokens pick at most 4 of the 6 experts of each layer.
    q = QuantizationConfig(bits=4, group_size=GROUP, dataset=_ids(1, 2, seed=1), nsamples=1)
    with caplog.at_level(logging.WARNING, logger="hyperdex"):
        path = compile_model(mixtral_hf, tmp_path, max_length=64, quantization=q)
    tensors = _quantized(path)
    calibrated = {e for e in range(EXPERTS) if f"blk.0.ffn_gate_up_exps[{e}]" in seen}
    skipped = sorted(set(range(EXPERTS)) - calibrated)
    assert 2 <= len(skipped) < EXPERTS
    for e in skipped:
        assert any(
            f"expert {e} of blk.0.ffn_gate_up_exps" in r.getMessage() and "RTN" in r.getMessage()
            for r in caplog.records
        ), e
        # Its codes are RTN's of its own weights (gate rows, then up rows).
        hf = load_hf_model(mixtral_hf).half().float()
        moe = hf.model.layers[0].mlp.experts
        gate_up = moe.gate_up_proj[e].detach().numpy().astype(np.float32)
        rtn = _core.quant.rtn(gate_up, bits=4, group_size=GROUP, sym=True, mse=0.0)
        inter = gate_up.shape[0] // 2
        np.testing.assert_array_equal(tensors[f"blk.0.ffn_gate.{e}.weight"], rtn["codes"][:inter])
        np.testing.assert_array_equal(tensors[f"blk.0.ffn_up.{e}.weight"], rtn["codes"][inter:])
    stats = json.loads(Path(path, "ckpt", "quantized", "hyperdex_config.json").read_text())
    assert stats["quantization"]["bits"] == 4
