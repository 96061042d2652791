"""OPT (``OPTForCausalLM``): learned positions offset by 2, pre- or post-norm blocks, an
optional projection of 350m's narrower embeddings."""

from __future__ import annotations

from ..types import Architecture, TensorRule

OPT = Architecture(
    family="opt",
    hf_names=("OPTForCausalLM",),
    vocab_size=("vocab_size",),
    hidden_size=("hidden_size",),
    num_layers=("num_hidden_layers",),
    num_heads=("num_attention_heads",),
    num_kv_heads=("num_attention_heads",),
    intermediate_size=("ffn_dim",),
    max_positions=("max_position_embeddings",),
    norm_eps=("layer_norm_eps",),
    activation=("activation_function",),
    norm="layernorm",
    positions="learned",
    gated_mlp=False,
    learned_pos_offset=2,
    default_activation="relu",
    tensors=(
        TensorRule("model.decoder.embed_tokens.weight", ("tok_embd.weight",)),
        TensorRule("model.decoder.embed_positions.weight", ("pos_embd.weight",)),
        TensorRule("model.decoder.project_in.weight", ("proj_in.weight",), when="projection"),
        TensorRule("model.decoder.project_out.weight", ("proj_out.weight",), when="projection"),
        TensorRule("model.decoder.layers.{i}.self_attn.q_proj.weight", ("blk.{i}.attn_q.weight",)),
        TensorRule("model.decoder.layers.{i}.self_attn.k_proj.weight", ("blk.{i}.attn_k.weight",)),
        TensorRule("model.decoder.layers.{i}.self_attn.v_proj.weight", ("blk.{i}.attn_v.weight",)),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.q_proj.bias",
            ("blk.{i}.attn_q.bias",),
            when="qkv_bias",
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.k_proj.bias",
            ("blk.{i}.attn_k.bias",),
            when="qkv_bias",
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.v_proj.bias",
            ("blk.{i}.attn_v.bias",),
            when="qkv_bias",
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.out_proj.weight", ("blk.{i}.attn_output.weight",)
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn.out_proj.bias",
            ("blk.{i}.attn_output.bias",),
            when="attn_out_bias",
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn_layer_norm.weight", ("blk.{i}.attn_norm.weight",)
        ),
        TensorRule(
            "model.decoder.layers.{i}.self_attn_layer_norm.bias", ("blk.{i}.attn_norm.bias",)
        ),
        TensorRule("model.decoder.layers.{i}.fc1.weight", ("blk.{i}.ffn_up.weight",)),
        TensorRule("model.decoder.layers.{i}.fc1.bias", ("blk.{i}.ffn_up.bias",), when="mlp_bias"),
        TensorRule("model.decoder.layers.{i}.fc2.weight", ("blk.{i}.ffn_down.weight",)),
        TensorRule(
            "model.decoder.layers.{i}.fc2.bias", ("blk.{i}.ffn_down.bias",), when="mlp_bias"
        ),
        TensorRule(
            "model.decoder.layers.{i}.final_layer_norm.weight", ("blk.{i}.ffn_norm.weight",)
        ),
        TensorRule("model.decoder.layers.{i}.final_layer_norm.bias", ("blk.{i}.ffn_norm.bias",)),
        TensorRule(
            "model.decoder.final_layer_norm.weight", ("output_norm.weight",), when="final_norm"
        ),
        TensorRule("model.decoder.final_layer_norm.bias", ("output_norm.bias",), when="final_norm"),
        TensorRule("lm_head.weight", ("output.weight",), when="untied"),
    ),
    ignored=(r"lm_head\.weight",),
    traits=lambda c: {
        "pre_norm": bool(c.get("do_layer_norm_before", True)),
        "final_norm": bool(c.get("do_layer_norm_before", True))
        and not c.get("_remove_final_layer_norm", False),
        "qkv_bias": bool(c.get("enable_bias", True)),
        "attn_out_bias": bool(c.get("enable_bias", True)),
        "mlp_bias": bool(c.get("enable_bias", True)),
        "embed_dim": int(c.get("word_embed_proj_dim") or c["hidden_size"]),
    },
    examples=("facebook/opt-125m", "facebook/opt-350m", "facebook/opt-1.3b"),
    unsupported=(
        ("layer_norm_elementwise_affine", lambda v: v is False, "LayerNorm without affine weights"),
    ),
)
