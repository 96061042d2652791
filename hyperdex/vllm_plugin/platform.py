"""The LPU as a vLLM platform: what vLLM may schedule on it, and what it refuses.

vLLM calls :meth:`LPUPlatform.check_and_update_config` once its config is built (in the
process that builds it; the engine gets the result). That is where the device's limits become
vLLM's: one sequence at a time (``max_num_seqs=1``; vLLM queues the rest), whole prompts
(``max_num_batched_tokens`` = ``max_model_len``), the compiled ``max_length`` as the context,
hyperdex's KV block size, and hyperdex's prefix cache in place of vLLM's. Features the device
cannot run are refused there with vLLM's own error type for a bad configuration
(``ValueError``), naming the feature, and per request by :meth:`validate_request` with
``VLLMValidationError`` (HTTP 400 in ``vllm serve``).

Prefix caching: vLLM's is turned off and hyperdex's runs inside the model (docs/serving.md,
"Prefix caching"). The device holds one sequence's KV cache, one striped region per layer
addressed by position, so vLLM's block ids cannot name rows of it; and vLLM's pool would be
that one sequence's blocks, where hyperdex keeps a host pool (1 GiB by default) of exact KV
blocks, keyed by chained hashes salted with the compiled model.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any, Optional

import torch
from vllm.exceptions import VLLMValidationError
from vllm.platforms.interface import Platform, PlatformEnum

from .target import RESOLVED_KEY, LPUTarget, resolve_target
from .upstream import hf_folder_of_compiled

if TYPE_CHECKING:
    from vllm.config import VllmConfig

__all__ = ["LPUPlatform"]

# Under "vllm": vLLM configures that logger tree (its format, its level), in every process.
log = logging.getLogger("vllm.hyperdex")

WORKER = "hyperdex.vllm_plugin.worker.LPUWorker"


def _refuse(feature: str, why: str) -> ValueError:
    return ValueError(f"hyperdex (LPU) does not support {feature}: {why}")


def _refuse_unsupported(vllm_config: VllmConfig) -> None:
    """Start-up refusals: features that need a batch of sequences on the device, a second
    model, weights vLLM loads, or inputs other than token ids."""
    model_config = vllm_config.model_config
    parallel = vllm_config.parallel_config
    if vllm_config.speculative_config is not None:
        raise _refuse(
            "speculative decoding (speculative_config)",
            "verifying draft tokens needs several positions decoded per step and a draft "
            "model; the LPU decodes one token of one sequence per step",
        )
    if vllm_config.lora_config is not None:
        raise _refuse(
            "LoRA adapters (enable_lora)",
            "the compiled programs hold the base weights only; merge the adapter into the "
            "checkpoint and compile that",
        )
    if model_config.is_multimodal_model:
        raise _refuse(
            f"multimodal models ({model_config.architecture})",
            "the LPU runs text decoders; serve the text-only model",
        )
    if model_config.runner_type != "generate":
        raise _refuse(
            f"the {model_config.runner_type!r} runner",
            "the compiled model generates text; pooling and embeddings are not compiled",
        )
    if model_config.enable_prompt_embeds:
        raise _refuse("prompt embeddings (enable_prompt_embeds)", "the device takes token ids")
    if parallel.pipeline_parallel_size > 1:
        raise _refuse(
            "pipeline parallelism",
            "a ring of LPUs is one device to vLLM; set tensor_parallel_size or "
            "NUM_LPU_DEVICES to the ring's size",
        )
    if parallel.data_parallel_size > 1:
        raise _refuse(
            "data parallelism", "run one vllm serve per device (or ring) behind a load balancer"
        )
    if vllm_config.kv_transfer_config is not None:
        raise _refuse(
            "KV cache transfer (kv_transfer_config)",
            "the device's KV cache is not addressed by vLLM's blocks",
        )


class _ModelAction(argparse._StoreAction):
    """``vllm serve <compiled folder>``: vLLM reads a model's config, tokenizer and generation
    config from a Hugging Face folder, which a compiled folder keeps in ``ckpt/``. This points
    those three there, unless the command line names them; the model stays the compiled
    folder (the name clients use, and what the plugin loads)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Optional[str] = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        ckpt = hf_folder_of_compiled(values)
        if ckpt is None:
            return
        for dest, unset in (
            ("hf_config_path", None),
            ("tokenizer", None),
            ("generation_config", "auto"),
        ):
            if getattr(namespace, dest, unset) == unset:
                setattr(namespace, dest, str(ckpt))


class LPUPlatform(Platform):
    """An LPU driven by hyperdex: the emulator, or a board through XRT. vLLM's own tensors
    (sampling, logits) stay on the CPU; the model runs on the device."""

    _enum = PlatformEnum.OOT
    device_name: str = "cpu"  # vLLM builds torch devices from it; get_device_name names the LPU
    device_type: str = "cpu"  # where vLLM's tensors live; the LPU is behind hyperdex
    dispatch_key: str = "CPU"
    dist_backend: str = "gloo"
    ray_device_key: str = ""

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return "LPU (hyperdex)"

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        # vLLM sizes its defaults by this; the KV capacity comes from the compiled memory map.
        return 0

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return False

    @classmethod
    def inference_mode(cls) -> Any:
        return torch.no_grad()

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        return None

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        torch.manual_seed(seed)

    @classmethod
    def get_current_memory_usage(cls, device: Any = None) -> float:
        return 0.0

    @classmethod
    def supports_structured_output(cls) -> bool:
        return True  # vLLM's grammar bitmask is applied to the device's logits on the host

    @classmethod
    def pre_register_and_update(cls, parser: Any = None) -> None:
        """Gives ``vllm serve``'s model argument :class:`_ModelAction` (argparse keeps its
        actions in ``_actions``; the store action is swapped for its subclass in place)."""
        if parser is None:
            return
        for action in parser._actions:
            if action.dest in ("model_tag", "model") and type(action) is argparse._StoreAction:
                action.__class__ = _ModelAction

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        model_config = vllm_config.model_config
        if model_config is None:  # vLLM builds model-less configs in places
            return
        _refuse_unsupported(vllm_config)
        parallel = vllm_config.parallel_config
        cache = vllm_config.cache_config
        scheduler = vllm_config.scheduler_config
        additional = vllm_config.additional_config
        if not isinstance(additional, dict):
            raise ValueError("hyperdex reads its options from additional_config, a dict")
        if RESOLVED_KEY in additional:
            # The engine process runs this hook again on the config this one produced.
            target = LPUTarget.from_options(additional[RESOLVED_KEY])
            max_model_len = model_config.max_model_len
        else:
            target, max_model_len = resolve_target(
                model=model_config.model,
                max_model_len=model_config.max_model_len,
                user_max_model_len=getattr(model_config, "original_max_model_len", None),
                tensor_parallel_size=parallel.tensor_parallel_size,
                block_size=cache.block_size if cache.user_specified_block_size else None,
                additional=additional,
            )
            additional[RESOLVED_KEY] = target.to_options()
        if max_model_len != model_config.max_model_len:
            log.info(
                "hyperdex: max_model_len %d -> %d (the compiled max_length)",
                model_config.max_model_len,
                max_model_len,
            )
            model_config.max_model_len = max_model_len
        # A ring of N LPUs is one device behind one hyperdex session: one vLLM worker.
        if parallel.tensor_parallel_size > 1:
            parallel.tensor_parallel_size = 1
            parallel.world_size = parallel.pipeline_parallel_size
        parallel.distributed_executor_backend = "uni"
        parallel.worker_cls = WORKER
        if scheduler.max_num_seqs != 1:
            log.info(
                "hyperdex: the LPU holds one sequence's KV cache, so max_num_seqs %d -> 1 "
                "(vLLM queues the other requests)",
                scheduler.max_num_seqs,
            )
        scheduler.max_num_seqs = 1
        # Whole prompts: the device prefills a prompt in one call, so never split one.
        scheduler.enable_chunked_prefill = False
        scheduler.max_num_batched_tokens = max_model_len
        scheduler.max_num_scheduled_tokens = max_model_len
        scheduler.async_scheduling = False  # each step waits for the device anyway
        cache.block_size = target.block_size
        if cache.enable_prefix_caching:
            log.info("hyperdex: vLLM's prefix caching is off; hyperdex's own cache is on")
        cache.enable_prefix_caching = False
        # No vLLM model is built: nothing for torch.compile or CUDA graphs.
        from vllm.config import CompilationMode

        compilation = vllm_config.compilation_config
        compilation.mode = CompilationMode.NONE
        compilation.cudagraph_capture_sizes = []
        model_config.enforce_eager = True

    @classmethod
    def validate_request(cls, processed_inputs: Any, params: Any) -> None:
        """Per-request refusals (HTTP 400 in ``vllm serve``): inputs other than token ids."""
        from vllm.inputs.engine import split_enc_dec_input

        _, decoder = split_enc_dec_input(processed_inputs)
        if decoder["type"] == "multimodal":
            raise VLLMValidationError(
                "hyperdex (LPU) does not support multimodal inputs: the compiled model takes "
                "token ids",
                parameter="multi_modal_data",
            )
        if decoder["type"] == "embeds":
            raise VLLMValidationError(
                "hyperdex (LPU) does not support prompt embeddings: the compiled model takes "
                "token ids",
                parameter="prompt_embeds",
            )
