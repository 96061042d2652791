"""LPU designs go through the instruction-level cost model (``hyperdex.tools.estimate``),
not through the roofline: one source of truth for a compiled program and a paper design.

The cost model builds the prefill and decode programs from the model's config alone and
prices them on a device preset. A design point's ``device.*`` fields become a preset JSON
file (the cost model's own format); results are cached per distinct (model, device, devices,
lengths), since a sweep repeats the same instruction streams across its system parameters.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from ...errors import ConfigError, HyperdexError

Result = Union[dict[str, Any], str]  # the estimate's figures, or why it could not be made


def hf_config(
    model: dict[str, Any], hf: Optional[dict[str, Any]], max_length: int
) -> dict[str, Any]:
    """The HF config the cost model reads: the model's own when it came from a config.json,
    else the registry architecture that has the same shape (a mixture of experts: Mixtral;
    gated MLP: Llama; else OPT, or StarCoder2 with grouped KV heads)."""
    if hf is not None:
        cfg = dict(hf)
        for key in ("max_position_embeddings", "n_positions"):
            if key in cfg and cfg[key] < max_length:
                cfg[key] = max_length
        return cfg
    d, heads = int(model["d_model"]), int(model["num_heads"])
    kv = int(model.get("num_kv_heads") or heads)
    d_ff = int(model.get("d_ff") or 4 * d)
    positions = max(int(model["max_positions"]), max_length)
    act = {"gelu_tanh": "gelu_new"}.get(model["activation"], model["activation"])
    experts = int(model.get("num_experts") or 0)
    if experts and not model["gated_mlp"]:
        raise ConfigError(
            "the cost model's mixtures of experts (Mixtral, Qwen3-MoE, OLMoE) have gated "
            "experts; a mixture needs gated_mlp: true on an LPU design"
        )
    if model["gated_mlp"] or kv != heads:
        # Llama's keys, which StarCoder2 (a non-gated MLP with grouped KV heads) shares.
        cfg: dict[str, Any] = {
            "hidden_size": d,
            "intermediate_size": d_ff,
            "num_hidden_layers": int(model["num_layers"]),
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "vocab_size": int(model["vocab_size"]),
            "max_position_embeddings": positions,
            "hidden_act": act,
            "tie_word_embeddings": False,
        }
        if model.get("d_head"):
            cfg["head_dim"] = int(model["d_head"])
        if experts:  # d_ff is each expert's width, Mixtral's intermediate_size
            return dict(
                cfg,
                architectures=["MixtralForCausalLM"],
                model_type="mixtral",
                num_local_experts=experts,
                num_experts_per_tok=int(model["experts_per_token"]),
            )
        if model["gated_mlp"]:
            return dict(cfg, architectures=["LlamaForCausalLM"], model_type="llama")
        return dict(cfg, architectures=["Starcoder2ForCausalLM"], model_type="starcoder2")
    return {
        "architectures": ["OPTForCausalLM"],
        "model_type": "opt",
        "hidden_size": d,
        "ffn_dim": d_ff,
        "num_hidden_layers": int(model["num_layers"]),
        "num_attention_heads": heads,
        "vocab_size": int(model["vocab_size"]),
        "max_position_embeddings": positions,
        "word_embed_proj_dim": d,
        "do_layer_norm_before": True,
        "activation_function": act,
        "enable_bias": True,
    }


class CostModelCache:
    """``estimate()`` calls, one per distinct question, with their preset files."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="hdex-explore-")
        self._cache: dict[str, Result] = {}
        self.calls = 0

    def close(self) -> None:
        self._dir.cleanup()

    def preset_file(self, device: dict[str, Any]) -> str:
        from ...presets import load_preset

        base = load_preset(device["preset"])
        data = dict(base)
        for key, value in device.items():
            if key == "preset":
                continue
            data[key] = int(value) if isinstance(base.get(key), int) else float(value)
        blob = json.dumps(data, sort_keys=True)
        name = "explore-" + hashlib.sha1(blob.encode()).hexdigest()[:12]
        data["name"] = name
        path = Path(self._dir.name) / f"{name}.json"
        if not path.exists():
            path.write_text(json.dumps(data, indent=1), encoding="utf-8")
        return str(path)

    def estimate(
        self,
        device: dict[str, Any],
        config: dict[str, Any],
        num_device: int,
        prompt_len: int,
        gen_len: int,
        quantization: str,
    ) -> Result:
        key = json.dumps(
            [device, config, num_device, prompt_len, gen_len, quantization],
            sort_keys=True,
            default=str,
        )
        if key in self._cache:
            return self._cache[key]
        try:
            from ...tools import estimate

            self.calls += 1
            e = estimate(
                config,
                num_device=num_device,
                type_device=self.preset_file(device),
                quantization=None if quantization == "w16a16" else quantization,
                prompt_len=prompt_len,
                new_tokens=gen_len,
                max_length=prompt_len + gen_len,
                keep_timeline=False,
            )
            result: Result = {
                "decode_ms_per_token": float(e.decode_ms_per_token),
                "prefill_ms": float(e.prefill_ms),
                "tokens_per_s": float(e.tokens_per_s),
                "bandwidth_utilization": float(e.bandwidth_utilization),
                "instructions": [
                    (i.opcode, i.role or i.opcode, float(i.time_us), int(i.hbm_bytes), int(i.macs))
                    for i in e.instructions
                ],
            }
        except HyperdexError as err:
            result = f"cost model: {err}"
        except ImportError as err:  # the C++ core is not built
            result = f"cost model unavailable ({err}); LPU designs need hyperdex._core"
        self._cache[key] = result
        return result
