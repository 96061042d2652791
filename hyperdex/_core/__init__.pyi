"""
hyperdex C++ core: memory planning, instruction generation, the LPU emulator
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
import typing_extensions
from . import cost
from . import quant
__all__: list[str] = ['ActKind', 'DeviceLayout', 'DevicePreset', 'GraphTensor', 'HAS_XRT', 'ISA_VERSION', 'IoLayout', 'MemoryPlan', 'ModelSpec', 'NormKind', 'PLAN_FORMAT_VERSION', 'PROGRAM_FORMAT_VERSION', 'ParamFile', 'PassOptions', 'PositionKind', 'Program', 'ProgramKind', 'Region', 'RegionKind', 'RopeStyle', 'Session', 'SessionConfig', 'XRT_KERNEL_ABI_VERSION', 'check_xclbin', 'choose_max_tokens', 'cost', 'crc32', 'generate_programs', 'kernel_level', 'lmem_bytes_per_token', 'load_program', 'model_tensors', 'param_file_name', 'plan_memory', 'program_from_bytes', 'quant', 'rope_table_row', 'sample_logits', 'shard_spec', 'write_params', 'write_stub_xclbin', 'xclbin_info', 'xrt_boards', 'xrt_library_dir', 'xrt_missing_message', 'xrt_version']
class NormKind:
    """
    Members:
    
      LayerNorm
    
      RmsNorm
    """
    LayerNorm: typing.ClassVar[NormKind]
    RmsNorm: typing.ClassVar[NormKind]
    __members__: typing.ClassVar[dict[str, NormKind]]
    @typing.overload
    def __eq__(self, other: NormKind) -> bool:
        ...
    @typing.overload
    def __eq__(self, other: typing.Any) -> bool:
        ...
    def __getstate__(self) -> int:
        ...
    def __hash__(self) -> int:
        ...
    def __index__(self) -> int:
        ...
    def __init__(self, value: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __int__(self) -> int:
        ...
    @typing.overload
    def __ne__(self, other: NormKind) -> bool:
        ...
    @typing.overload
    def __ne__(self, other: typing.Any) -> bool:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, state: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __str__(self) -> str:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def value(self) -> int:
        ...
class ActKind:
    """
    Members:
    
      None_
    
      Relu
    
      Gelu
    
      GeluTanh
    
      Silu
    
      Clip
    """
    Clip: typing.ClassVar[ActKind]
    Gelu: typing.ClassVar[ActKind]
    GeluTanh: typing.ClassVar[ActKind]
    None_: typing.ClassVar[ActKind]
    Relu: typing.ClassVar[ActKind]
    Silu: typing.ClassVar[ActKind]
    __members__: typing.ClassVar[dict[str, ActKind]]
    @typing.overload
    def __eq__(self, other: ActKind) -> bool:
        ...
    @typing.overload
    def __eq__(self, other: typing.Any) -> bool:
        ...
    def __getstate__(self) -> int:
        ...
    def __hash__(self) -> int:
        ...
    def __index__(self) -> int:
        ...
    def __init__(self, value: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __int__(self) -> int:
        ...
    @typing.overload
    def __ne__(self, other: ActKind) -> bool:
        ...
    @typing.overload
    def __ne__(self, other: typing.Any) -> bool:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, state: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __str__(self) -> str:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def value(self) -> int:
        ...
class PositionKind:
    """
    Members:
    
      None_
    
      Learned
    
      Rope
    """
    Learned: typing.ClassVar[PositionKind]
    None_: typing.ClassVar[PositionKind]
    Rope: typing.ClassVar[PositionKind]
    __members__: typing.ClassVar[dict[str, PositionKind]]
    @typing.overload
    def __eq__(self, other: PositionKind) -> bool:
        ...
    @typing.overload
    def __eq__(self, other: typing.Any) -> bool:
        ...
    def __getstate__(self) -> int:
        ...
    def __hash__(self) -> int:
        ...
    def __index__(self) -> int:
        ...
    def __init__(self, value: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __int__(self) -> int:
        ...
    @typing.overload
    def __ne__(self, other: PositionKind) -> bool:
        ...
    @typing.overload
    def __ne__(self, other: typing.Any) -> bool:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, state: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __str__(self) -> str:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def value(self) -> int:
        ...
class RopeStyle:
    """
    Members:
    
      Neox
    
      Gptj
    """
    Gptj: typing.ClassVar[RopeStyle]
    Neox: typing.ClassVar[RopeStyle]
    __members__: typing.ClassVar[dict[str, RopeStyle]]
    @typing.overload
    def __eq__(self, other: RopeStyle) -> bool:
        ...
    @typing.overload
    def __eq__(self, other: typing.Any) -> bool:
        ...
    def __getstate__(self) -> int:
        ...
    def __hash__(self) -> int:
        ...
    def __index__(self) -> int:
        ...
    def __init__(self, value: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __int__(self) -> int:
        ...
    @typing.overload
    def __ne__(self, other: RopeStyle) -> bool:
        ...
    @typing.overload
    def __ne__(self, other: typing.Any) -> bool:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, state: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __str__(self) -> str:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def value(self) -> int:
        ...
class ModelSpec:
    act: ActKind
    architecture: str
    attn_out_bias: bool
    branch_input_norm: bool
    branch_output_norm: bool
    final_norm: bool
    gated_mlp: bool
    lm_head_bias: bool
    mlp_bias: bool
    norm: NormKind
    norm_bias: bool
    parallel_block: bool
    positions: PositionKind
    pre_norm: bool
    qk_norm: bool
    qk_norm_bias: bool
    qk_norm_whole: bool
    qkv_bias: bool
    quantize_lm_head: bool
    rope_style: RopeStyle
    router_renormalize: bool
    shared_norm: bool
    tie_word_embeddings: bool
    def __init__(self) -> None:
        ...
    def validate(self) -> None:
        ...
    @property
    def attn_scale(self) -> float:
        ...
    @attn_scale.setter
    def attn_scale(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def attn_softcap(self) -> float:
        ...
    @attn_softcap.setter
    def attn_softcap(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def clip_qkv(self) -> float:
        ...
    @clip_qkv.setter
    def clip_qkv(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def embed_dim(self) -> int:
        ...
    @embed_dim.setter
    def embed_dim(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def embed_scale(self) -> float:
        ...
    @embed_scale.setter
    def embed_scale(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def experts_per_token(self) -> int:
        ...
    @experts_per_token.setter
    def experts_per_token(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def final_logit_softcap(self) -> float:
        ...
    @final_logit_softcap.setter
    def final_logit_softcap(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def group_size(self) -> int:
        ...
    @group_size.setter
    def group_size(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def head_dim(self) -> int:
        ...
    @head_dim.setter
    def head_dim(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def hidden_size(self) -> int:
        ...
    @hidden_size.setter
    def hidden_size(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def intermediate_size(self) -> int:
        ...
    @intermediate_size.setter
    def intermediate_size(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def k_norm_count(self) -> int:
        ...
    @k_norm_count.setter
    def k_norm_count(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def layer_rope(self) -> list[int]:
        ...
    @layer_rope.setter
    def layer_rope(self, arg0: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        ...
    @property
    def layer_windows(self) -> list[int]:
        ...
    @layer_windows.setter
    def layer_windows(self, arg0: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        ...
    @property
    def learned_pos_offset(self) -> int:
        ...
    @learned_pos_offset.setter
    def learned_pos_offset(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def learned_pos_rows(self) -> int:
        ...
    @learned_pos_rows.setter
    def learned_pos_rows(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def lm_head_rows(self) -> int:
        ...
    @lm_head_rows.setter
    def lm_head_rows(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def logit_scale(self) -> float:
        ...
    @logit_scale.setter
    def logit_scale(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def norm_eps(self) -> float:
        ...
    @norm_eps.setter
    def norm_eps(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def num_experts(self) -> int:
        ...
    @num_experts.setter
    def num_experts(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def num_heads(self) -> int:
        ...
    @num_heads.setter
    def num_heads(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def num_kv_heads(self) -> int:
        ...
    @num_kv_heads.setter
    def num_kv_heads(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def num_layers(self) -> int:
        ...
    @num_layers.setter
    def num_layers(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def q_norm_count(self) -> int:
        ...
    @q_norm_count.setter
    def q_norm_count(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def rope_attention_factor(self) -> float:
        ...
    @rope_attention_factor.setter
    def rope_attention_factor(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def rope_dim(self) -> int:
        ...
    @rope_dim.setter
    def rope_dim(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def rope_inv_freq(self) -> list[float]:
        ...
    @rope_inv_freq.setter
    def rope_inv_freq(self, arg0: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]) -> None:
        ...
    @property
    def rope_local_inv_freq(self) -> list[float]:
        ...
    @rope_local_inv_freq.setter
    def rope_local_inv_freq(self, arg0: collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]) -> None:
        ...
    @property
    def sliding_window(self) -> int:
        ...
    @sliding_window.setter
    def sliding_window(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def vocab_size(self) -> int:
        ...
    @vocab_size.setter
    def vocab_size(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def weight_bits(self) -> int:
        ...
    @weight_bits.setter
    def weight_bits(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
class DevicePreset:
    name: str
    def __init__(self) -> None:
        ...
    def validate(self) -> None:
        ...
    @property
    def chain_cycles(self) -> int:
        ...
    @chain_cycles.setter
    def chain_cycles(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def clock_mhz(self) -> float:
        ...
    @clock_mhz.setter
    def clock_mhz(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def hbm_bandwidth_gbps(self) -> float:
        ...
    @hbm_bandwidth_gbps.setter
    def hbm_bandwidth_gbps(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def hbm_channel_bytes(self) -> int:
        ...
    @hbm_channel_bytes.setter
    def hbm_channel_bytes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def hbm_channels(self) -> int:
        ...
    @hbm_channels.setter
    def hbm_channels(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def hbm_efficiency(self) -> float:
        ...
    @hbm_efficiency.setter
    def hbm_efficiency(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def hbm_latency_ns(self) -> float:
        ...
    @hbm_latency_ns.setter
    def hbm_latency_ns(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def issue_cycles(self) -> int:
        ...
    @issue_cycles.setter
    def issue_cycles(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def lmem_bytes(self) -> int:
        ...
    @lmem_bytes.setter
    def lmem_bytes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def mac_lanes(self) -> int:
        ...
    @mac_lanes.setter
    def mac_lanes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def mac_pipeline_cycles(self) -> int:
        ...
    @mac_pipeline_cycles.setter
    def mac_pipeline_cycles(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def mac_trees(self) -> int:
        ...
    @mac_trees.setter
    def mac_trees(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def ring_bandwidth_gbps(self) -> float:
        ...
    @ring_bandwidth_gbps.setter
    def ring_bandwidth_gbps(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def ring_latency_ns(self) -> float:
        ...
    @ring_latency_ns.setter
    def ring_latency_ns(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def run_overhead_us(self) -> float:
        ...
    @run_overhead_us.setter
    def run_overhead_us(self, arg0: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    @property
    def vector_lanes(self) -> int:
        ...
    @vector_lanes.setter
    def vector_lanes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def vector_pipeline_cycles(self) -> int:
        ...
    @vector_pipeline_cycles.setter
    def vector_pipeline_cycles(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def weight_buffer_bytes(self) -> int:
        ...
    @weight_buffer_bytes.setter
    def weight_buffer_bytes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
class RegionKind:
    """
    Members:
    
      Matrix
    
      Vector
    
      RopeTable
    
      KvCache
    
      QMatrix
    """
    KvCache: typing.ClassVar[RegionKind]
    Matrix: typing.ClassVar[RegionKind]
    QMatrix: typing.ClassVar[RegionKind]
    RopeTable: typing.ClassVar[RegionKind]
    Vector: typing.ClassVar[RegionKind]
    __members__: typing.ClassVar[dict[str, RegionKind]]
    @typing.overload
    def __eq__(self, other: RegionKind) -> bool:
        ...
    @typing.overload
    def __eq__(self, other: typing.Any) -> bool:
        ...
    def __getstate__(self) -> int:
        ...
    def __hash__(self) -> int:
        ...
    def __index__(self) -> int:
        ...
    def __init__(self, value: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __int__(self) -> int:
        ...
    @typing.overload
    def __ne__(self, other: RegionKind) -> bool:
        ...
    @typing.overload
    def __ne__(self, other: typing.Any) -> bool:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, state: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __str__(self) -> str:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def value(self) -> int:
        ...
class Region:
    def bytes_per_channel(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> int:
        ...
    @property
    def base(self) -> int:
        ...
    @property
    def bits(self) -> int:
        ...
    @property
    def cols(self) -> int:
        ...
    @property
    def expert_rows(self) -> int:
        ...
    @property
    def experts(self) -> int:
        ...
    @property
    def group_size(self) -> int:
        ...
    @property
    def kind(self) -> RegionKind:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def row_bytes(self) -> int:
        ...
    @property
    def rows(self) -> int:
        ...
    @property
    def sources(self) -> list[str]:
        ...
class IoLayout:
    @property
    def argmax_offset(self) -> int:
        ...
    @property
    def base(self) -> int:
        ...
    @property
    def bytes(self) -> int:
        ...
    @property
    def ids_offset(self) -> int:
        ...
    @property
    def logits_offset(self) -> int:
        ...
class MemoryPlan:
    def fingerprint(self) -> int:
        ...
    def total_bytes(self) -> int:
        ...
    @property
    def channel_bytes(self) -> list[int]:
        ...
    @property
    def channel_capacity(self) -> int:
        ...
    @property
    def io(self) -> IoLayout:
        ...
    @property
    def kv_base(self) -> int:
        ...
    @property
    def kv_bytes(self) -> int:
        ...
    @property
    def max_length(self) -> int:
        ...
    @property
    def max_tokens(self) -> int:
        ...
    @property
    def num_channels(self) -> int:
        ...
    @property
    def regions(self) -> list[Region]:
        ...
    @property
    def vocab_size(self) -> int:
        ...
    @property
    def weights_bytes(self) -> int:
        ...
class PassOptions:
    __hash__: typing.ClassVar[None] = None
    chunk_ring: bool
    fuse_argmax: bool
    fuse_epilogue: bool
    fuse_gate_up: bool
    fuse_qkv: bool
    reorder: bool
    def __eq__(self, arg0: PassOptions) -> bool:
        ...
    def __init__(self) -> None:
        ...
class GraphTensor:
    @property
    def name(self) -> str:
        ...
    @property
    def quantize(self) -> bool:
        ...
    @property
    def shape(self) -> list[int]:
        ...
    @property
    def split(self) -> str:
        ...
class ParamFile:
    path: str
    @typing.overload
    def __init__(self) -> None:
        ...
    @typing.overload
    def __init__(self, path: str, bytes: typing.SupportsInt | typing.SupportsIndex, crc32: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def bytes(self) -> int:
        ...
    @bytes.setter
    def bytes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def crc32(self) -> int:
        ...
    @crc32.setter
    def crc32(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
class ProgramKind:
    """
    Members:
    
      Prefill
    
      Decode
    """
    Decode: typing.ClassVar[ProgramKind]
    Prefill: typing.ClassVar[ProgramKind]
    __members__: typing.ClassVar[dict[str, ProgramKind]]
    @typing.overload
    def __eq__(self, other: ProgramKind) -> bool:
        ...
    @typing.overload
    def __eq__(self, other: typing.Any) -> bool:
        ...
    def __getstate__(self) -> int:
        ...
    def __hash__(self) -> int:
        ...
    def __index__(self) -> int:
        ...
    def __init__(self, value: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __int__(self) -> int:
        ...
    @typing.overload
    def __ne__(self, other: ProgramKind) -> bool:
        ...
    @typing.overload
    def __ne__(self, other: typing.Any) -> bool:
        ...
    def __repr__(self) -> str:
        ...
    def __setstate__(self, state: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def __str__(self) -> str:
        ...
    @property
    def name(self) -> str:
        ...
    @property
    def value(self) -> int:
        ...
class Program:
    def __len__(self) -> int:
        ...
    def disassemble(self, region_names: collections.abc.Mapping[typing.SupportsInt | typing.SupportsIndex, str] = {}) -> str:
        ...
    def instructions(self) -> list:
        """
        [{op, flags, sub, n, k, i0, i1, f0, f1, dst/a/b: (space, offset, stride), w0/w1: (base, row_bytes, rows)}], one per instruction.
        """
    def opcodes(self) -> list[str]:
        ...
    def save(self, path: str) -> None:
        ...
    def to_bytes(self) -> bytes:
        ...
    @property
    def kind(self) -> ProgramKind:
        ...
    @property
    def lmem_bytes(self) -> int:
        ...
    @property
    def max_tokens(self) -> int:
        ...
    @property
    def plan_fingerprint(self) -> int:
        ...
class DeviceLayout:
    def __init__(self) -> None:
        ...
    @property
    def channel_bytes(self) -> list[int]:
        ...
    @channel_bytes.setter
    def channel_bytes(self, arg0: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> None:
        ...
    @property
    def io_base(self) -> int:
        ...
    @io_base.setter
    def io_base(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def io_bytes(self) -> int:
        ...
    @io_bytes.setter
    def io_bytes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
class SessionConfig:
    decode_path: str
    layout: DeviceLayout
    prefill_path: str
    def __init__(self) -> None:
        ...
    def add_kv_region(self, base: typing.SupportsInt | typing.SupportsIndex, row_bytes: typing.SupportsInt | typing.SupportsIndex, rows: typing.SupportsInt | typing.SupportsIndex, cols: typing.SupportsInt | typing.SupportsIndex, name: str = '') -> None:
        """
        A KV cache region of the memory map; `name` (optional) is for error messages.
        """
    def set_io(self, arg0: typing.SupportsInt | typing.SupportsIndex, arg1: typing.SupportsInt | typing.SupportsIndex, arg2: typing.SupportsInt | typing.SupportsIndex, arg3: typing.SupportsInt | typing.SupportsIndex, arg4: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def max_length(self) -> int:
        ...
    @max_length.setter
    def max_length(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def params(self) -> list[ParamFile]:
        ...
    @params.setter
    def params(self, arg0: collections.abc.Sequence[ParamFile]) -> None:
        ...
    @property
    def plan_fingerprint(self) -> int:
        ...
    @plan_fingerprint.setter
    def plan_fingerprint(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def vocab_size(self) -> int:
        ...
    @vocab_size.setter
    def vocab_size(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    @property
    def weights_bytes(self) -> int:
        ...
    @weights_bytes.setter
    def weights_bytes(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
class Session:
    @staticmethod
    def emulator(preset: DevicePreset, config: SessionConfig, num_threads: typing.SupportsInt | typing.SupportsIndex = 0, timeout_s: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> Session:
        """
        Loads a compiled model onto a new emulated device (timeout_s 0: runs are not timed).
        """
    @staticmethod
    def emulator_ring(preset: DevicePreset, configs: collections.abc.Sequence[SessionConfig], vocab_size: typing.SupportsInt | typing.SupportsIndex, num_threads: typing.SupportsInt | typing.SupportsIndex = 0, timeout_s: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> Session:
        """
        Loads a tensor-parallel model onto a ring of emulated devices, one config per device.
        """
    @staticmethod
    def simulated_board(preset: DevicePreset, config: SessionConfig, xclbin: str, kernel: str = 'lpu', timeout_s: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> Session:
        """
        For tests: the XRT backend's logic over a simulated board whose kernel is the emulator.
        """
    @staticmethod
    def xrt(preset: DevicePreset, config: SessionConfig, xclbin: str, kernel: str = 'lpu', device_index: typing.SupportsInt | typing.SupportsIndex = 0, timeout_s: typing.SupportsFloat | typing.SupportsIndex = 60.0) -> Session:
        """
        Loads a compiled model onto board `device_index` through XRT (docs/xrt.md).
        """
    def decode(self, id: typing.SupportsInt | typing.SupportsIndex, want_logits: bool = True) -> tuple:
        """
        Appends one token; returns (argmax, fp32 logits [vocab] or None).
        """
    def decode_sample(self, id: typing.SupportsInt | typing.SupportsIndex, temperature: typing.SupportsFloat | typing.SupportsIndex, top_k: typing.SupportsInt | typing.SupportsIndex, top_p: typing.SupportsFloat | typing.SupportsIndex, min_p: typing.SupportsFloat | typing.SupportsIndex, min_p_first: bool, u: typing.SupportsFloat | typing.SupportsIndex) -> int:
        """
        Appends one token and samples the next from the logits in C++ (sample_logits), which never reach Python; returns the token.
        """
    def prefill(self, ids: typing.Annotated[numpy.typing.ArrayLike, numpy.int32], logits_all: bool = False) -> tuple[int, numpy.typing.NDArray[numpy.float32]]:
        """
        Appends tokens; returns (argmax of the last row, fp32 logits [rows, vocab]).
        """
    def program(self, slot: str) -> Program:
        """
        A copy of the program loaded in slot 'prefill' or 'decode'.
        """
    def read_hbm(self, channel: typing.SupportsInt | typing.SupportsIndex, offset: typing.SupportsInt | typing.SupportsIndex, nbytes: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.uint8]:
        """
        Device 0's HBM pseudo-channel `channel`, bytes [offset, offset + nbytes).
        """
    def read_kv(self, start: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex) -> typing.Any:
        """
        KV cache positions [start, start + n) as float16 [regions, n, cols] (a copy).
        """
    def read_lmem(self, offset: typing.SupportsInt | typing.SupportsIndex, nbytes: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.uint8]:
        """
        On-chip memory bytes [offset, offset + nbytes).
        """
    def reset(self) -> None:
        ...
    def run_range(self, slot: str, start_pos: typing.SupportsInt | typing.SupportsIndex, n_tokens: typing.SupportsInt | typing.SupportsIndex, begin: typing.SupportsInt | typing.SupportsIndex, end: typing.SupportsInt | typing.SupportsIndex, want_logits: bool = False, logits_all: bool = False) -> None:
        """
        Executes instructions [begin, end) of the 'prefill' or 'decode' program; the token ids are what the I/O region holds. Does not move the session's position.
        """
    def truncate(self, arg0: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def write_hbm(self, channel: typing.SupportsInt | typing.SupportsIndex, offset: typing.SupportsInt | typing.SupportsIndex, data: typing.Any) -> None:
        """
        Writes an array's bytes into device 0's HBM pseudo-channel `channel` at `offset`.
        """
    def write_kv(self, start: typing.SupportsInt | typing.SupportsIndex, data: numpy.ndarray) -> None:
        """
        Writes KV positions [start, start + n) from float16 [regions, n, cols]; the sequence then holds start + n positions.
        """
    def write_lmem(self, offset: typing.SupportsInt | typing.SupportsIndex, data: typing.Any) -> None:
        """
        Writes an array's bytes into on-chip memory.
        """
    @property
    def device(self) -> str:
        ...
    @property
    def kv_shape(self) -> tuple[int, int]:
        """
        (KV regions, fp16 values per position): read_kv gives [regions, n, cols].
        """
    @property
    def max_length(self) -> int:
        ...
    @property
    def num_devices(self) -> int:
        ...
    @property
    def position(self) -> int:
        ...
    @property
    def prefill_chunk(self) -> int:
        ...
    @property
    def vocab_size(self) -> int:
        ...
    @property
    def weight_bytes_read(self) -> list[int]:
        """
        Per device, the HBM bytes of weight rows the MATMULs of the last run read (an expert MATMUL: its picked experts' rows only).
        """
def check_xclbin(path: str, preset: DevicePreset, kernel: str = 'lpu') -> None:
    ...
def choose_max_tokens(spec: ModelSpec, preset: DevicePreset, max_length: typing.SupportsInt | typing.SupportsIndex, limit: typing.SupportsInt | typing.SupportsIndex = 128) -> int:
    ...
def crc32(data: typing_extensions.Buffer, crc: typing.SupportsInt | typing.SupportsIndex = 0) -> int:
    ...
def generate_programs(spec: ModelSpec, plan: MemoryPlan, passes: PassOptions = ..., devices: typing.SupportsInt | typing.SupportsIndex = 1) -> tuple[Program, Program]:
    ...
def kernel_level() -> str:
    ...
def lmem_bytes_per_token(arg0: ModelSpec) -> int:
    ...
def load_program(path: str) -> Program:
    ...
def model_tensors(spec: ModelSpec) -> list[GraphTensor]:
    """
    The canonical tensors of a model (the layer graph's, unfused), in stream order.
    """
def param_file_name(arg0: typing.SupportsInt | typing.SupportsIndex) -> str:
    ...
def plan_memory(spec: ModelSpec, preset: DevicePreset, max_length: typing.SupportsInt | typing.SupportsIndex, max_tokens: typing.SupportsInt | typing.SupportsIndex, passes: PassOptions = ...) -> MemoryPlan:
    ...
def program_from_bytes(arg0: bytes) -> Program:
    ...
def rope_table_row(spec: ModelSpec, position: typing.SupportsInt | typing.SupportsIndex, table: typing.SupportsInt | typing.SupportsIndex = 1) -> list[float]:
    ...
def sample_logits(logits: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], temperature: typing.SupportsFloat | typing.SupportsIndex, top_k: typing.SupportsInt | typing.SupportsIndex, top_p: typing.SupportsFloat | typing.SupportsIndex, min_p: typing.SupportsFloat | typing.SupportsIndex, min_p_first: bool, u: typing.SupportsFloat | typing.SupportsIndex) -> int:
    """
    The token Session.decode_sample draws from fp32 logits [vocab] with the uniform draw u in [0, 1): the sampling pipeline (temperature, min-p, top-k, top-p; min_p_first is vLLM's order) and sample_token of hyperdex.transformers.generation, in C++.
    """
def shard_spec(spec: ModelSpec, devices: typing.SupportsInt | typing.SupportsIndex) -> ModelSpec:
    """
    One device's share of the model on a ring of `devices` (tensor parallelism).
    """
def write_params(spec: ModelSpec, plan: MemoryPlan, tensors: dict, out_dir: str, on_channel_done: typing.Any = None) -> list[ParamFile]:
    """
    Writes param/hbm_chNN.bin (one per pseudo-channel); returns [ParamFile].
    """
def write_stub_xclbin(path: str, preset: DevicePreset, kernel: str = 'lpu', metadata: collections.abc.Mapping[str, str] = {}) -> None:
    """
    Writes an xclbin with the LPU kernel's interface for `preset` and no bitstream.
    """
def xclbin_info(path: str) -> dict:
    ...
def xrt_boards() -> list:
    """
    The boards XRT enumerates: [{index, name, bdf, offline, memory (XRT's JSON), error}].
    """
def xrt_library_dir() -> str:
    ...
def xrt_missing_message() -> str:
    ...
def xrt_version() -> str:
    ...
HAS_XRT: bool
ISA_VERSION: int
PLAN_FORMAT_VERSION: int
PROGRAM_FORMAT_VERSION: int
XRT_KERNEL_ABI_VERSION: int
