"""The vLLM worker of an LPU: loads (compiling first when needed) the model onto a hyperdex
device, tells vLLM's KV cache manager what the compiled memory map holds, and runs steps
through :class:`~.model_runner.LPUModelRunner`.

KV accounting: the device's KV regions hold ``max_length`` positions of one sequence per layer,
so vLLM gets one full-attention spec per layer (fp16, the model's KV heads and head size) and
exactly the memory of ``ceil(max_length / block_size)`` blocks, plus the null block vLLM's
pool keeps back. vLLM's blocks are bookkeeping only: the rows live on the device, addressed by
position (hyperdex's prefix cache saves and restores them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheSpec
from vllm.v1.worker.gpu_worker import init_worker_distributed_environment
from vllm.v1.worker.worker_base import CompilationTimes, WorkerBase

from .model_runner import LPUModelRunner
from .target import RESOLVED_KEY, LPUTarget, kv_blocks

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput
    from vllm.v1.outputs import ModelRunnerOutput

    from ..transformers.modeling import LPUModelForCausalLM

__all__ = ["LPUWorker"]

# Under "vllm": vLLM configures that logger tree (its format, its level), in every process.
log = logging.getLogger("vllm.hyperdex")


def load_target(target: LPUTarget) -> LPUModelForCausalLM:
    """The model on its device: the compiled folder, or the model compiled first
    (``AutoCompiler``, ``fast_compile``: a compile whose inputs did not change is reused)."""
    from ..transformers import AutoModelForCausalLM

    folder = target.model
    if not target.compiled:
        from ..tools import AutoCompiler

        log.info("hyperdex: compiling %s (max_length=%d)", target.model, target.max_length)
        folder = AutoCompiler().compile(
            model_id=target.model,
            num_device=target.num_lpu,
            max_length=target.max_length,
            prefix=target.prefix,
            quantization=target.quantization,
            fast_compile=True,
            progress=False,
        )
    return AutoModelForCausalLM.from_pretrained(
        Path(folder),
        device_map=target.device_map,
        backend=target.backend,
        num_threads=target.num_threads,
        prefix_cache_block_size=target.block_size,
        prefix_cache_bytes=target.prefix_cache_bytes,
    )


class LPUWorker(WorkerBase):
    """One worker drives one LPU, or one ring of them (a single hyperdex session)."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        local_rank: int,
        rank: int,
        distributed_init_method: str,
        is_driver_worker: bool = False,
    ) -> None:
        super().__init__(vllm_config, local_rank, rank, distributed_init_method, is_driver_worker)
        self.target = LPUTarget.from_options(vllm_config.additional_config[RESOLVED_KEY])
        self.model: Optional[LPUModelForCausalLM] = None
        self.runner: Optional[LPUModelRunner] = None
        self.num_blocks = 0

    # -- start-up ------------------------------------------------------------------------------

    def init_device(self) -> None:
        self.device = torch.device("cpu")
        # vLLM's sampler and structured outputs ask for its (one-rank) process groups.
        init_worker_distributed_environment(
            self.vllm_config,
            self.rank,
            self.distributed_init_method,
            self.local_rank,
            self.current_platform.dist_backend,
        )

    def load_model(self, *, load_dummy_weights: bool = False) -> None:
        self.model = load_target(self.target)
        log.info("hyperdex: %s on %s", self.model.folder, self.model.device_description)
        if self.model.max_length < self.model_config.max_model_len:
            raise ValueError(
                f"max_model_len={self.model_config.max_model_len} exceeds the compiled "
                f"max_length={self.model.max_length} of {self.model.folder}"
            )
        self.runner = LPUModelRunner(self.vllm_config, self.model)

    def _model(self) -> LPUModelForCausalLM:
        if self.model is None:
            raise RuntimeError("the model is not loaded yet")
        return self.model

    def get_kv_cache_spec(self) -> dict[str, KVCacheSpec]:
        record = self._model().config.model
        spec = FullAttentionSpec(
            block_size=self.cache_config.block_size,
            num_kv_heads=int(record.num_kv_heads),
            head_size=int(record.head_dim),
            dtype=torch.float16,
        )
        return {f"model.layers.{i}.self_attn.attn": spec for i in range(int(record.num_layers))}

    def get_supported_kv_cache_layouts(self) -> list[str]:
        # No vLLM attention backend runs (the device attends): vLLM's default preference.
        from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts

        return [layout.name for layout in get_supported_kv_cache_layouts([])]

    def get_cache_block_size_bytes(self) -> int:
        specs = self.get_kv_cache_spec()
        return sum(spec.page_size_bytes for spec in specs.values())

    def determine_available_memory(self) -> int:
        """What the compiled memory map holds, as vLLM counts memory: its KV blocks and
        vLLM's null block."""
        blocks = kv_blocks(self._model().max_length, self.cache_config.block_size)
        log.info(
            "hyperdex: the device holds %d KV blocks of %d positions (max_length %d)",
            blocks,
            self.cache_config.block_size,
            self._model().max_length,
        )
        return (blocks + 1) * self.get_cache_block_size_bytes()

    def initialize_from_config(self, kv_cache_config: KVCacheConfig) -> None:
        # Nothing to allocate: the KV cache is the device's.
        self.num_blocks = kv_cache_config.num_blocks

    def compile_or_warm_up_model(self) -> CompilationTimes:
        return CompilationTimes(language_model=0.0, encoder=0.0)

    def update_max_model_len(self, max_model_len: int) -> None:
        self.model_config.max_model_len = max_model_len

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def get_model(self) -> Any:
        return self._model()

    # -- steps ---------------------------------------------------------------------------------

    def _runner(self) -> LPUModelRunner:
        if self.runner is None:
            raise RuntimeError("the model is not loaded yet")
        return self.runner

    def execute_model(self, scheduler_output: SchedulerOutput) -> Optional[ModelRunnerOutput]:
        return self._runner().execute_model(scheduler_output)

    def sample_tokens(self, grammar_output: Optional[GrammarOutput]) -> ModelRunnerOutput:
        return self._runner().sample_tokens(grammar_output)

    def execute_dummy_batch(self) -> None:
        return None

    def take_draft_token_ids(self) -> None:
        return None

    def check_health(self) -> None:
        return None

    def reset_mm_cache(self) -> None:
        return None

    def reset_encoder_cache(self) -> None:
        return None

    # -- refused -------------------------------------------------------------------------------

    def add_lora(self, lora_request: Any) -> bool:
        raise ValueError("hyperdex (LPU) does not support LoRA adapters")

    def remove_lora(self, lora_id: int) -> bool:
        raise ValueError("hyperdex (LPU) does not support LoRA adapters")

    def pin_lora(self, lora_id: int) -> bool:
        raise ValueError("hyperdex (LPU) does not support LoRA adapters")

    def list_loras(self) -> set[int]:
        return set()

    def shutdown(self) -> None:
        if self.runner is not None:
            self.runner.shutdown()
