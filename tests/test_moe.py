"""Mixtures of experts (Mixtral, Qwen3-MoE, OLMoE) beyond tests/test_architectures.py's
cases: both checkpoint layouts of the experts, a missing expert, the tensor-parallel split of
the experts, and what a decode step streams (only the picked experts: the active parameters).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Tuple

import helpers as H
import numpy as np
import pytest
import torch

from hyperdex.errors import CheckpointError

# Rows of 64 fp16 (128 bytes, whole 64-byte rows) and 32 on 2 devices; expert blocks of 128
# and 64 rows (whole stripes of 32 channels): no padding anywhere, so the bytes a decode step
# streams are exactly the active parameters'.
HIDDEN, HEADS, KV_HEADS, EXPERT_WIDTH, VOCAB, LAYERS = 64, 4, 2, 64, 256, 2
EXPERTS, PER_TOKEN = 6, 2
MAX_LENGTH = 64

# family -> (HF class, the experts' module and each expert's gate, up, down projections).
FAMILIES: Dict[str, Tuple[str, Tuple[str, str, str, str]]] = {
    "mixtral": ("MixtralForCausalLM", ("block_sparse_moe", "w1", "w3", "w2")),
    "qwen3_moe": ("Qwen3MoeForCausalLM", ("mlp", "gate_proj", "up_proj", "down_proj")),
}


def _config(family: str) -> Any:
    import transformers

    sizes = dict(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        num_experts_per_tok=PER_TOKEN,
        bos_token_id=0,
        eos_token_id=None,
    )
    if family == "mixtral":
        return transformers.MixtralConfig(
            **sizes, intermediate_size=EXPERT_WIDTH, num_local_experts=EXPERTS
        )
    return transformers.Qwen3MoeConfig(
        **sizes, moe_intermediate_size=EXPERT_WIDTH, num_experts=EXPERTS, norm_topk_prob=True
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Tuple[Path, Any]]:
    """family -> (a saved tiny random model, one tensor per expert; the torch model)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("moe")
    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(family), dtype=torch.float32).eval()
        H.randomize(model, 0, 0.1)
        model.save_pretrained(str(root / family))
        out[family] = (root / family, model)
    return out


def _weights(folder: Path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _save(folder: Path, tensors: Dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _stack_experts(src: Path, dst: Path, family: str) -> None:
    """The checkpoint with its experts as transformers holds them in memory:
    ``mlp.experts.gate_up_proj`` [E, 2I, H] (each expert's gate rows, then its up rows),
    ``mlp.experts.down_proj`` [E, H, I] and the router as ``mlp.gate``."""
    block, gate, up, down = FAMILIES[family][1]
    shutil.copytree(src, dst)
    tensors = _weights(src)
    for i in range(LAYERS):
        p = f"model.layers.{i}."

        def take(proj: str, e: int, p: str = p) -> np.ndarray:
            return tensors.pop(f"{p}{block}.experts.{e}.{proj}.weight")

        gate_up = [np.concatenate([take(gate, e), take(up, e)]) for e in range(EXPERTS)]
        tensors[p + "mlp.experts.gate_up_proj"] = np.stack(gate_up)
        tensors[p + "mlp.experts.down_proj"] = np.stack([take(down, e) for e in range(EXPERTS)])
        tensors[p + "mlp.gate.weight"] = tensors.pop(f"{p}{block}.gate.weight")
    _save(dst, tensors)


def _convert(folder: Path, out: Path) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """hyperdex_config.json's content and every tensor of hyperdex_model.bin."""
    from hyperdex.compiled.record import load_converted
    from hyperdex.tools import AutoModelConverter

    AutoModelConverter.from_pretrained(folder).save_pretrained(out, progress=False)
    config, model_file = load_converted(out)
    return config, {name: np.array(model_file[name]) for name in model_file.names}


# -- the two layouts of the experts ------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_stacked_experts_convert_like_one_tensor_per_expert(
    checkpoints: Dict[str, Tuple[Path, Any]], family: str, tmp_path: Path
) -> None:
    """transformers reads the stacked layout as the same model (so the layout is its), and
    hyperdex converts it to the same canonical tensors, bit for bit."""
    from transformers import AutoModelForCausalLM

    folder, model = checkpoints[family]
    stacked = tmp_path / "stacked"
    _stack_experts(folder, stacked, family)
    again = AutoModelForCausalLM.from_pretrained(str(stacked), dtype=torch.float32)
    want = model.state_dict()
    got = again.state_dict()
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert torch.equal(got[name], t), name

    config, per_expert = _convert(folder, tmp_path / "per_expert_out")
    config_s, from_stacked = _convert(stacked, tmp_path / "stacked_out")
    assert config["model"]["layout"]["fused_experts"] is False
    assert config_s["model"]["layout"]["fused_experts"] is True
    assert sorted(from_stacked) == sorted(per_expert)
    assert "blk.1.ffn_up.5.weight" in per_expert and "blk.0.ffn_router.weight" in per_expert
    for name, t in per_expert.items():
        np.testing.assert_array_equal(from_stacked[name], t, err_msg=name)
    # And the tensors are the experts': expert 3's up projection of layer 1.
    block, _, up, _ = FAMILIES[family][1]
    hf = _weights(folder)[f"model.layers.1.{block}.experts.3.{up}.weight"]
    np.testing.assert_array_equal(per_expert["blk.1.ffn_up.3.weight"], hf.astype(np.float16))


def test_a_missing_expert_is_named(
    checkpoints: Dict[str, Tuple[Path, Any]], tmp_path: Path
) -> None:
    from hyperdex.tools import AutoModelConverter

    folder = tmp_path / "mixtral"
    shutil.copytree(checkpoints["mixtral"][0], folder)
    tensors = _weights(folder)
    del tensors["model.layers.1.block_sparse_moe.experts.4.w3.weight"]
    _save(folder, tensors)
    with pytest.raises(
        CheckpointError, match=r"model\.layers\.1\.block_sparse_moe\.experts\.4\.w3"
    ):
        AutoModelConverter.from_pretrained(folder)


def test_stacked_experts_of_another_count_are_named(
    checkpoints: Dict[str, Tuple[Path, Any]], tmp_path: Path
) -> None:
    from hyperdex.tools import AutoModelConverter

    folder = tmp_path / "stacked"
    _stack_experts(checkpoints["qwen3_moe"][0], folder, "qwen3_moe")
    tensors = _weights(folder)
    name = "model.layers.0.mlp.experts.down_proj"
    tensors[name] = tensors[name][:-1]  # 5 experts where config.json says 6
    _save(folder, tensors)
    with pytest.raises(CheckpointError) as e:
        AutoModelConverter.from_pretrained(folder)
    assert name in str(e.value) and "[5, 64, 64]" in str(e.value) and "[6, 64, 64]" in str(e.value)


# -- several devices ---------------------------------------------------------------------------


@pytest.mark.parametrize("devices", (2, 4))
def test_each_device_holds_its_share_of_every_expert(
    checkpoints: Dict[str, Tuple[Path, Any]], tmp_path: Path, devices: int
) -> None:
    """Tensor parallelism inside every expert: a device holds rows [r*I/N, (r+1)*I/N) of each
    expert's gate and up projections and those columns of its down projection; the router is
    replicated; gathering the shares gives the model back."""
    from hyperdex.arch.record import ModelRecord
    from hyperdex.tools.sharding import gather_tensors, shard_tensors

    config, tensors = _convert(checkpoints["qwen3_moe"][0], tmp_path / "out")
    record = ModelRecord.from_dict(config["model"])
    share = EXPERT_WIDTH // devices
    shards = [shard_tensors(record, tensors, devices, r) for r in range(devices)]
    for r, shard in enumerate(shards):
        rows = slice(r * share, (r + 1) * share)
        for e in (0, EXPERTS - 1):
            for proj in ("gate", "up"):
                name = f"blk.1.ffn_{proj}.{e}.weight"
                np.testing.assert_array_equal(shard[name], tensors[name][rows], err_msg=name)
            name = f"blk.1.ffn_down.{e}.weight"
            np.testing.assert_array_equal(shard[name], tensors[name][:, rows], err_msg=name)
        np.testing.assert_array_equal(
            shard["blk.0.ffn_router.weight"], tensors["blk.0.ffn_router.weight"]
        )
    back = gather_tensors(record, shards)
    assert sorted(back) == sorted(tensors)
    for name, t in tensors.items():
        np.testing.assert_array_equal(back[name], t, err_msg=name)


# -- what a decode step streams ----------------------------------------------------------------


def active_weight_bytes(record: Any, devices: int) -> int:
    """The fp16 bytes of the matrices one token's decode reads on each of ``devices``: every
    layer's attention projections (split by heads) and router (replicated), the
    experts_per_token experts it is routed to (each split by its intermediate rows), and the
    LM head (split by vocabulary). Not the other num_experts - experts_per_token experts."""
    h, hd = record.hidden_size, record.head_dim
    q, kv = record.num_heads * hd, record.num_kv_heads * hd
    attention = (h * (q + 2 * kv) + q * h) // devices
    router = record.num_experts * h
    experts = record.experts_per_token * 3 * record.intermediate_size * h // devices
    head = record.vocab_size * h // devices
    return 2 * (record.num_layers * (attention + router + experts) + head)


def emulator_weight_bytes(lm: Any) -> list:
    """Per device, the HBM weight bytes the MATMULs of the session's last run read."""
    return list(lm._session.weight_bytes_read)


def cost_model_weight_bytes(folder: Path, start_pos: int) -> Tuple[int, int]:
    """The cost model's weight bytes for one decode step at ``start_pos``: its run's total and
    the sum of its per-instruction figures."""
    from hyperdex import _core
    from hyperdex.presets import device_preset

    mm = json.loads((folder / "config" / "memory_map.json").read_text())
    decode = _core.load_program(str(folder / "inst" / "decode.bin"))
    run = _core.cost.CostModel(decode, device_preset(mm["device_preset"])).run(start_pos, 1)
    return run.weight_bytes, sum(i.weight_bytes for i in run.instructions)


@pytest.mark.parametrize("devices", (1, 2))
def test_a_decode_step_streams_only_the_picked_experts(
    checkpoints: Dict[str, Tuple[Path, Any]], tmp_path: Path, devices: int
) -> None:
    """The bytes the emulator's MATMULs read in a decode step equal the cost model's figure
    (and the sum of its per-instruction ones) and are the active parameters: k of the E
    experts of each layer, on every device of a ring."""
    from hyperdex.arch.registry import model_traits

    folder, _ = checkpoints["mixtral"]
    path = Path(H.compile_model(folder, tmp_path / "c", MAX_LENGTH, num_device=devices))
    record = model_traits(json.loads((folder / "config.json").read_text()))[2]
    lm = H.load_lpu(str(path), devices)
    prompt = np.arange(3, 13, dtype=np.int32)
    session = lm._session
    session.reset()
    session.prefill(prompt)
    session.decode(7)
    read = emulator_weight_bytes(lm)
    total, per_instruction = cost_model_weight_bytes(path, len(prompt))
    assert read == [total] * devices
    assert per_instruction == total
    assert total == active_weight_bytes(record, devices)
    every_expert = dataclasses.replace(record, experts_per_token=EXPERTS)
    assert total < active_weight_bytes(every_expert, devices)
