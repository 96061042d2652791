"""vLLM's scheduler output, executed on a hyperdex device.

The device decodes one sequence at a time, so the platform gives vLLM ``max_num_seqs=1`` and
every step schedules at most one request: its whole prompt (a new or resumed request) or its
last sampled token. Each request runs as one hyperdex generation
(``LPUModelForCausalLM.generate_yield``), advanced one token per vLLM step: the first step
prefills (after the longest prefix hyperdex's prefix cache holds), each later step decodes.
hyperdex keeps what it keeps for its own callers: the device gate, the prefix cache, the
check that the device still holds this sequence, the estimated board time.

Tokens are chosen by vLLM's own sampler, so every ``SamplingParams`` field (seed, temperature,
top-k/p, min-p, penalties, logit bias, min tokens, bad words, allowed ids, logprobs in vLLM's
``logprobs_mode``) and structured outputs (vLLM's grammar bitmask) follow vLLM exactly.
hyperdex's generation loop hands each step's raw logits to a streamer's ``constrain_logits``
hook (:class:`_VllmChoice`); the runner samples there and returns logits in which only vLLM's
token survives, so hyperdex's greedy choice is vLLM's token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Optional

import numpy as np
import torch
from vllm.sampling_params import SamplingType
from vllm.v1.outputs import (
    EMPTY_MODEL_RUNNER_OUTPUT,
    LogprobsTensors,
    ModelRunnerOutput,
    SamplerOutput,
)
from vllm.v1.sample.logits_processor import build_logitsprocs
from vllm.v1.sample.sampler import Sampler
from vllm.v1.structured_output.utils import apply_grammar_bitmask
from vllm.v1.worker.gpu_input_batch import CachedRequestState, InputBatch

from ..transformers import GenerationConfig
from .target import kv_blocks

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput

    from ..transformers.modeling import LPUModelForCausalLM

__all__ = ["LPUModelRunner"]


class _VllmChoice:
    """The streamer of one request's hyperdex generation. hyperdex calls
    ``constrain_logits(logits)`` with each step's raw logits before its own (greedy) choice;
    ``choose`` samples with vLLM and the result keeps only that token."""

    def __init__(self, choose: Callable[[np.ndarray], int]) -> None:
        self._choose = choose

    def put(self, value: Any) -> None:  # the streamer protocol: tokens are reported by vLLM
        return None

    def end(self) -> None:
        return None

    def constrain_logits(self, logits: np.ndarray) -> np.ndarray:
        token = self._choose(logits)
        only = np.full(np.shape(logits), -np.inf, dtype=np.float32)
        only[..., token] = 0.0
        return only


@dataclass
class _Request:
    state: CachedRequestState
    steps: Optional[Generator[int, None, None]] = None  # its hyperdex generation, once started

    def stop(self) -> None:
        """Ends the generation (finished, aborted or preempted): the device is free again."""
        if self.steps is not None:
            self.steps.close()
            self.steps = None


class LPUModelRunner:
    """Keeps vLLM's per-request state (vLLM's ``InputBatch``, which its sampler reads) and
    runs each scheduled step on ``model``."""

    def __init__(self, vllm_config: VllmConfig, model: LPUModelForCausalLM) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.model = model
        self.device = torch.device("cpu")
        self.vocab_size = self.model_config.get_vocab_size()
        if model.vocab_size != self.vocab_size:
            raise ValueError(
                f"the compiled model's vocabulary ({model.vocab_size} tokens) differs from the "
                f"one vLLM reads from the model's config ({self.vocab_size})"
            )
        max_model_len = self.model_config.max_model_len
        block_size = vllm_config.cache_config.block_size
        self.input_batch = InputBatch(
            max_num_reqs=1,
            max_model_len=max_model_len,
            max_num_batched_tokens=vllm_config.scheduler_config.max_num_batched_tokens,
            device=self.device,
            vocab_size=self.vocab_size,
            block_sizes=[block_size],
            max_num_blocks_per_req=[kv_blocks(max_model_len, block_size)],
            logitsprocs=build_logitsprocs(
                vllm_config,
                self.device,
                False,
                False,
                self.model_config.logits_processors or (),
            ),
            logitsprocs_need_output_token_ids=bool(self.model_config.logits_processors),
        )
        self.sampler = Sampler(logprobs_mode=self.model_config.logprobs_mode)
        self.requests: dict[str, _Request] = {}
        # The step being run: what sample_tokens needs from execute_model, and what the
        # sampling hook leaves for it.
        self._step: Optional[SchedulerOutput] = None
        self._grammar: Optional[GrammarOutput] = None
        self._sampled: Optional[SamplerOutput] = None

    # -- vLLM's state --------------------------------------------------------------------------

    def _update_states(self, scheduler_output: SchedulerOutput) -> None:
        """vLLM's persistent-batch bookkeeping for a batch of at most one request."""
        batch = self.input_batch
        for req_id in scheduler_output.finished_req_ids:
            request = self.requests.pop(req_id, None)
            if request is not None:
                request.stop()
            batch.remove_request(req_id)
        scheduled = scheduler_output.num_scheduled_tokens
        cached = scheduler_output.scheduled_cached_reqs
        # Preempted, or scheduled again after a preemption: its sequence is started over.
        for req_id in set(batch.req_id_to_index) - (set(scheduled) - cached.resumed_req_ids):
            self.requests[req_id].stop()
            batch.remove_request(req_id)
        for new in scheduler_output.scheduled_new_reqs:
            params = new.sampling_params
            generator = None
            if params is not None and params.sampling_type == SamplingType.RANDOM_SEED:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(params.seed)
            state = CachedRequestState(
                req_id=new.req_id,
                prompt_token_ids=new.prompt_token_ids,
                mm_features=new.mm_features,
                sampling_params=params,
                generator=generator,
                block_ids=new.block_ids,
                num_computed_tokens=new.num_computed_tokens,
                output_token_ids=[],
                lora_request=new.lora_request,
            )
            self.requests[new.req_id] = _Request(state)
            batch.add_request(state)
        for i, req_id in enumerate(cached.req_ids):
            state = self.requests[req_id].state
            state.num_computed_tokens = cached.num_computed_tokens[i]
            if req_id in cached.resumed_req_ids or req_id not in batch.req_id_to_index:
                del state.output_token_ids[cached.num_output_tokens[i] :]
                batch.add_request(state)
            else:
                index = batch.req_id_to_index[req_id]
                batch.num_computed_tokens_cpu[index] = state.num_computed_tokens
        batch.condense()
        batch.refresh_metadata()

    # -- a step --------------------------------------------------------------------------------

    def execute_model(self, scheduler_output: SchedulerOutput) -> Optional[ModelRunnerOutput]:
        """Updates the states; the device runs in :meth:`sample_tokens`, which vLLM calls next
        with the grammar bitmask of structured outputs (a device step and its token choice are
        one call of hyperdex's generation loop)."""
        self._update_states(scheduler_output)
        if not scheduler_output.total_num_scheduled_tokens:
            return EMPTY_MODEL_RUNNER_OUTPUT
        self._step = scheduler_output
        return None

    def sample_tokens(self, grammar_output: Optional[GrammarOutput]) -> ModelRunnerOutput:
        step, self._step = self._step, None
        if step is None:
            return EMPTY_MODEL_RUNNER_OUTPUT
        if len(step.num_scheduled_tokens) != 1:
            raise RuntimeError(
                f"vLLM scheduled {len(step.num_scheduled_tokens)} requests in one step; the LPU "
                "runs one (max_num_seqs=1)"
            )
        ((req_id, num_scheduled),) = step.num_scheduled_tokens.items()
        request = self.requests[req_id]
        state = request.state
        if state.num_computed_tokens + num_scheduled < state.num_tokens:
            # A piece of a prompt (chunked prefill, which the platform turns off): no token
            # yet; the prompt is prefilled whole with its last piece.
            return self._output(req_id, [], None, {})
        prompt_logprobs: dict[str, Optional[LogprobsTensors]] = {}
        if request.steps is None:
            tokens = list(state.prompt_token_ids or []) + state.output_token_ids
            params = state.sampling_params
            if params is not None and params.prompt_logprobs is not None:
                if not state.output_token_ids:
                    prompt_logprobs[req_id] = self._prompt_logprobs(state, params.prompt_logprobs)
            request.steps = self.model.generate_yield(
                np.asarray([tokens], dtype=np.int64),
                # hyperdex only runs the device: vLLM chooses every token and decides when the
                # request ends, so no eos and no budget short of the compiled context.
                generation_config=GenerationConfig(
                    max_new_tokens=self.model.max_length - len(tokens), do_sample=False
                ),
                streamer=_VllmChoice(self._sample),
            )
        self._step, self._grammar = step, grammar_output
        try:
            token = next(request.steps)
        except StopIteration:
            raise RuntimeError(
                f"request {req_id} reached the compiled max_length ({self.model.max_length}) "
                "before vLLM ended it"
            ) from None
        finally:
            self._step = self._grammar = None
        sampled, self._sampled = self._sampled, None
        if sampled is None or int(sampled.sampled_token_ids[0, 0]) != token:
            raise RuntimeError(f"the device's token {token} is not the one vLLM sampled")
        self._record(req_id, token)
        logprobs = sampled.logprobs_tensors
        return self._output(
            req_id, [token], logprobs.tolists() if logprobs is not None else None, prompt_logprobs
        )

    def _sample(self, logits: np.ndarray) -> int:
        """The hook hyperdex calls with a step's raw logits: vLLM's grammar bitmask and
        sampler on them (a copy: vLLM's sampler edits its input in place)."""
        scores = torch.tensor(np.asarray(logits, dtype=np.float32).reshape(1, -1))
        if self._grammar is not None and self._step is not None:
            apply_grammar_bitmask(self._step, self._grammar, self.input_batch, scores)
        self._sampled = self.sampler(
            logits=scores, sampling_metadata=self.input_batch.sampling_metadata
        )
        return int(self._sampled.sampled_token_ids[0, 0])

    def _record(self, req_id: str, token: int) -> None:
        """The new token where vLLM's sampler looks for it next step (penalties, min tokens)."""
        batch = self.input_batch
        index = batch.req_id_to_index[req_id]
        end = int(batch.num_tokens_no_spec[index])
        batch.token_ids_cpu[index, end] = token
        batch.is_token_ids[index, end] = True
        batch.num_tokens_no_spec[index] = end + 1
        self.requests[req_id].state.output_token_ids.append(token)

    def _prompt_logprobs(self, state: CachedRequestState, wanted: int) -> LogprobsTensors:
        """vLLM's prompt logprobs from the logits of every prompt position (one forward call;
        it leaves the prompt on the device, so the generation's prefill that follows is a
        prefix-cache hit). Position i scores token i + 1."""
        prompt = list(state.prompt_token_ids or [])
        count = self.vocab_size if wanted == -1 else wanted
        if len(prompt) < 2:
            return LogprobsTensors.empty_cpu(0, count + 1)
        logits = self.model(np.asarray([prompt], dtype=np.int64)).logits
        rows = torch.from_numpy(np.ascontiguousarray(logits[0, :-1], dtype=np.float32))
        if self.model_config.logprobs_mode in ("raw_logits", "processed_logits"):
            scores = rows
        else:
            scores = self.sampler.compute_logprobs(rows)
        targets = torch.tensor(prompt[1:], dtype=torch.int64)
        token_ids, logprobs, ranks, *_ = self.sampler.gather_logprobs(scores, count, targets)
        return LogprobsTensors(token_ids, logprobs, ranks)

    def _output(
        self,
        req_id: str,
        tokens: list[int],
        logprobs: Any,
        prompt_logprobs: dict[str, Optional[LogprobsTensors]],
    ) -> ModelRunnerOutput:
        return ModelRunnerOutput(
            req_ids=[req_id],
            req_id_to_index={req_id: 0},
            sampled_token_ids=[tokens],
            logprobs=logprobs,
            prompt_logprobs_dict=prompt_logprobs,
        )

    def shutdown(self) -> None:
        for request in self.requests.values():
            request.stop()
        self.requests.clear()
