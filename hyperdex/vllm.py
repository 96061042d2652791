"""A vLLM-style offline API on LPU devices, with vLLM's names::

    from hyperdex.vllm import LLM, SamplingParams

    llm = LLM(model="/path/to/compiled/or/hf/model")
    outputs = llm.generate(["Hello, my name is"], SamplingParams(temperature=0, max_tokens=32))
    print(outputs[0].outputs[0].text)

The device count comes from ``NUM_LPU_DEVICES`` (default: the compile's), hybrid prefill on
GPUs from ``NUM_GPU_DEVICES``. Prompts run one after another (the LPU decodes one sequence at
a time); the prefix cache makes a shared prompt prefix cost one prefill. ``n`` > 1 runs the
prompt n times (with a seed, choice i samples with seed + i, as vLLM seeds its children).
Log-probabilities are vLLM's default ``raw_logprobs``: the log-softmax of the model's logits,
before penalties, bias, temperature and top-k/top-p. Structured outputs:
``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))`` (or ``regex``,
``choice``, ``grammar``, ``json_object``; vLLM's older ``guided_decoding=GuidedDecodingParams(...)``
too); ``LLM.chat(messages, tools=[...])`` renders the tools through the chat template.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .serving import device_map_from_env, load_for_serving
from .serving.engine import (
    MAX_LOGPROBS,
    Sampling,
    TokenLogprob,
    TokenTexts,
    run_generation,
)
from .serving.structured import (
    Grammar,
    GrammarCompiler,
    GuidedDecodingParams,
    StructuredOutputsParams,
)
from .serving.tool_calls import parse_tools, template_handles_tools, template_messages

__all__ = [
    "LLM",
    "CompletionOutput",
    "GuidedDecodingParams",
    "Logprob",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputsParams",
]

log = logging.getLogger("hyperdex")

# vLLM engine arguments that mean nothing on an LPU (GPU memory, CUDA graphs, ...): accepted so
# code written for vLLM runs, and ignored.
_IGNORED_LLM_ARGS = {
    "tokenizer_mode",
    "trust_remote_code",
    "dtype",
    "revision",
    "tokenizer_revision",
    "gpu_memory_utilization",
    "swap_space",
    "cpu_offload_gb",
    "enforce_eager",
    "max_seq_len_to_capture",
    "disable_custom_all_reduce",
    "disable_async_output_proc",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_chunked_prefill",
    "download_dir",
    "load_format",
    "kv_cache_dtype",
    "compilation_config",
    "disable_log_stats",
}


@dataclass
class SamplingParams:
    """vLLM's sampling parameters, with vLLM's meanings. ``temperature=0`` is greedy; ``top_k``
    0 or -1 is off; ``min_p`` keeps tokens at least that fraction as likely as the likeliest
    (after temperature, before top-k/top-p); ``presence_penalty`` / ``frequency_penalty``
    lower the logits of tokens already generated; ``logit_bias`` adds to logits by token id;
    ``logprobs`` / ``prompt_logprobs`` ask for that many top log-probabilities per generated /
    prompt token. ``seed`` None takes one from the LLM's seed, so runs repeat; with ``n`` > 1
    choice i samples with seed + i. ``structured_outputs`` constrains the output (a JSON
    schema, a regex, a choice, a grammar); ``guided_decoding`` is its older name."""

    n: int = 1
    best_of: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: Optional[dict[int, float]] = None
    structured_outputs: Optional[StructuredOutputsParams] = None
    guided_decoding: Optional[GuidedDecodingParams] = None

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if self.best_of not in (None, self.n):
            raise ValueError(
                "best_of is not supported (it must equal n or be None); use n for several answers"
            )
        if not self.detokenize:
            raise ValueError("detokenize=False is not supported")
        for name in ("structured_outputs", "guided_decoding"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, StructuredOutputsParams):
                raise TypeError(f"{name} must be a StructuredOutputsParams, got {value!r}")
        if self.structured_outputs is not None and self.guided_decoding is not None:
            raise ValueError("give structured_outputs or guided_decoding (its old name), not both")
        try:
            self._sampling(None)  # validates the rest
        except ValueError as e:
            raise ValueError(e.args[0]) from None

    def _sampling(self, seed: Optional[int]) -> Sampling:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=dict(self.logit_bias or {}),
            seed=self.seed if self.seed is not None else seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            logprobs=self.logprobs,
            prompt_logprobs=self.prompt_logprobs,
        )


@dataclass
class Logprob:
    """vLLM's Logprob: a token's log-probability, its rank (1: the likeliest) and its text."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


@dataclass
class CompletionOutput:
    """One generated sequence (vLLM's names)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float] = None
    # per generated token: {token id: Logprob} for the chosen token, then the top `logprobs`
    logprobs: Optional[list[dict[int, Logprob]]] = None
    finish_reason: Optional[str] = None  # "stop" or "length"
    stop_reason: Union[int, str, None] = None  # the stop string or stop token id, if any

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The result for one prompt (vLLM's names). ``num_cached_tokens`` counts the prompt
    tokens the prefix cache supplied."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # per prompt token: None for the first, then {token id: Logprob} as in CompletionOutput
    prompt_logprobs: Optional[list[Optional[dict[int, Logprob]]]] = None


PromptType = Union[str, dict[str, Any]]


class LLM:
    """An LLM on LPU devices, vLLM-style.

    Args:
        model: a compiled folder, or the model id / HF folder given to ``compile()`` (it is
            compiled first when it was not, for ``max_model_len`` tokens, default 2048).
        tokenizer: a tokenizer folder (default: the model's own).
        seed: seeds the per-request seeds of sampling requests that give none.
        max_model_len: the context to compile for; must not exceed a compiled model's.
        enable_prefix_caching: keep KV blocks of past prompts (default True).
        tensor_parallel_size: LPU devices, when ``NUM_LPU_DEVICES`` is not set.
        max_logprobs: the most top log-probabilities a request may ask for (vLLM's 20).
        logprobs_mode: only vLLM's default, ``"raw_logprobs"`` (of the unprocessed logits).
        prefix, backend, num_threads, block_size: hyperdex's loading options.
    """

    def __init__(
        self,
        model: Union[str, Path],
        tokenizer: Optional[str] = None,
        seed: Optional[int] = 0,
        max_model_len: Optional[int] = None,
        enable_prefix_caching: bool = True,
        tensor_parallel_size: Optional[int] = None,
        prefix: Optional[Union[str, Path]] = None,
        backend: Optional[str] = None,
        num_threads: int = 0,
        block_size: int = 32,
        quantization: Optional[str] = None,
        max_logprobs: int = MAX_LOGPROBS,
        logprobs_mode: str = "raw_logprobs",
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _IGNORED_LLM_ARGS)
        if unknown:
            raise TypeError(f"LLM() got unexpected argument(s): {', '.join(unknown)}")
        if quantization is not None:
            raise ValueError("quantization is chosen at compile time; compile the model with it")
        if logprobs_mode != "raw_logprobs":
            raise ValueError(
                f"logprobs_mode={logprobs_mode!r} is not supported; log-probabilities are those "
                "of the raw logits ('raw_logprobs')"
            )
        if isinstance(max_logprobs, bool) or not isinstance(max_logprobs, int) or max_logprobs < 0:
            raise ValueError(f"max_logprobs must be an integer >= 0, got {max_logprobs!r}")
        self.max_logprobs = max_logprobs
        device_map = device_map_from_env()
        if device_map is None and tensor_parallel_size is not None:
            device_map = {"lpu": int(tensor_parallel_size)}
        self.model, self.tokenizer = load_for_serving(
            model,
            prefix=prefix,
            device_map=device_map,
            max_length=max_model_len,
            backend=backend,
            num_threads=num_threads,
            enable_prefix_caching=enable_prefix_caching,
            prefix_cache_block_size=block_size,
        )
        if tokenizer is not None:
            from .transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if max_model_len is not None and max_model_len > self.model.max_length:
            raise ValueError(
                f"max_model_len={max_model_len} exceeds the {self.model.max_length} tokens the "
                "model was compiled for; recompile with a larger max_length"
            )
        self._seeds = np.random.default_rng(seed)
        self._next_id = 0
        self._grammars = GrammarCompiler.for_model(self.model, self.tokenizer)

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def beam_search(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: beam search needs several sequences decoded side by side."""
        raise NotImplementedError(
            "beam search is not supported: the LPU decodes one sequence at a time; use "
            "generate() with SamplingParams(temperature=0) for greedy search, or n > 1 with "
            "sampling for several answers"
        )

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType], None] = None,
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
        prompt_token_ids: Optional[Sequence[Sequence[int]]] = None,
        **kwargs: Any,
    ) -> list[RequestOutput]:
        """Generates for each prompt: strings, ``{"prompt": str}``, ``{"prompt_token_ids":
        [...]}``, or a list of them. ``sampling_params``: one for all, or one per prompt."""
        if kwargs.get("lora_request") is not None:
            raise ValueError("LoRA adapters are not supported")
        items = self._prompts(prompts, prompt_token_ids)
        params = self._params(sampling_params, len(items))
        return self._run(items, params, use_tqdm)

    def chat(
        self,
        messages: Union[list[dict[str, Any]], list[list[dict[str, Any]]]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: Optional[dict[str, Any]] = None,
        tools: Optional[list[dict[str, Any]]] = None,
        **kwargs: Any,
    ) -> list[RequestOutput]:
        """Generates a reply to each conversation (a list of ``{"role", "content"}``, or a
        list of such lists), through the tokenizer's chat template. ``tools`` (OpenAI's
        shape) go to the template, or into the system message when the template ignores
        them (hyperdex.serving.tool_calls); the reply's text holds any ``<tool_call>``."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        tool_list = parse_tools(tools) if tools else []
        native = template_handles_tools(self.tokenizer) if chat_template is None else True
        items = []
        for conv in conversations:
            conv, template_tools = template_messages(list(conv), tool_list, native)
            options = dict(chat_template_kwargs or {})
            if template_tools:
                options["tools"] = template_tools
            text = self.tokenizer.apply_chat_template(
                conv,
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
                **options,
            )
            ids = list(self.tokenizer(text, add_special_tokens=False).input_ids)
            items.append((text, ids))
        params = self._params(sampling_params, len(items))
        return self._run(items, params, use_tqdm)

    # -- helpers -----------------------------------------------------------------------------

    def _prompts(
        self, prompts: Any, prompt_token_ids: Optional[Sequence[Sequence[int]]]
    ) -> list[tuple[Optional[str], list[int]]]:
        if prompts is None and prompt_token_ids is not None:
            prompts = [{"prompt_token_ids": list(p)} for p in prompt_token_ids]
        if prompts is None:
            raise TypeError("generate() needs prompts")
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        items: list[tuple[Optional[str], list[int]]] = []
        for p in prompts:
            if isinstance(p, str):
                items.append((p, list(self.tokenizer(p).input_ids)))
            elif isinstance(p, dict) and "prompt_token_ids" in p:
                items.append((p.get("prompt"), [int(t) for t in p["prompt_token_ids"]]))
            elif isinstance(p, dict) and isinstance(p.get("prompt"), str):
                items.append((p["prompt"], list(self.tokenizer(p["prompt"]).input_ids)))
            else:
                raise TypeError(
                    "a prompt is a string, {'prompt': str} or {'prompt_token_ids': [ids]}, "
                    f"got {p!r}"
                )
        return items

    @staticmethod
    def _params(sampling_params: Any, n: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams()] * n
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * n
        params = list(sampling_params)
        if len(params) != n:
            raise ValueError(f"{len(params)} sampling_params for {n} prompts")
        return params

    def _check_logprobs(self, params: list[SamplingParams]) -> None:
        for sp in params:
            for name in ("logprobs", "prompt_logprobs"):
                value = getattr(sp, name)
                if value is not None and value > self.max_logprobs:
                    raise ValueError(
                        f"Requested {name} of {value}, which is greater than max allowed: "
                        f"{self.max_logprobs} (LLM(max_logprobs=...))"
                    )

    def _logprob_dicts(
        self, entries: list[Optional[TokenLogprob]], texts: TokenTexts
    ) -> list[Optional[dict[int, Logprob]]]:
        """vLLM's shape: per position the token's own entry first, then the top ones."""
        out: list[Optional[dict[int, Logprob]]] = []
        for e in entries:
            if e is None:
                out.append(None)
                continue
            step = {e.token_id: Logprob(e.logprob, e.rank, texts(e.token_id))}
            for rank, (t, lp) in enumerate(e.top, 1):
                step.setdefault(t, Logprob(lp, rank, texts(t)))
            out.append(step)
        return out

    def _run(
        self,
        items: list[tuple[Optional[str], list[int]]],
        params: list[SamplingParams],
        use_tqdm: bool,
    ) -> list[RequestOutput]:
        from .tools.progress import progress_bar

        self._check_logprobs(params)
        texts = TokenTexts(self.tokenizer)
        grammars: dict[int, Grammar] = {}  # one compile per SamplingParams
        for sp in params:
            spec = sp.structured_outputs or sp.guided_decoding
            if spec is not None and id(sp) not in grammars:
                grammars[id(sp)] = self._grammars.compile(spec)
        results = []
        with progress_bar(len(items), "Processed prompts", "prompt", enabled=use_tqdm) as bar:
            for (text, ids), sp in zip(items, params):
                start = time.monotonic()
                outputs, cached, prompt_lp = [], 0, None
                for i in range(sp.n):
                    if sp.seed is not None:
                        seed = sp.seed + i  # vLLM seeds child i of a request with seed + i
                    elif sp.temperature > 0:  # none given: one from the LLM's generator
                        seed = int(self._seeds.integers(0, 2**31))
                    else:
                        seed = None
                    sampling = sp._sampling(seed).replace(seed=seed, grammar=grammars.get(id(sp)))
                    if i > 0:  # the prompt's log-probabilities are the same for every child
                        sampling = sampling.replace(prompt_logprobs=None)
                    r = run_generation(
                        self.model, self.tokenizer, ids, sampling, grammars=self._grammars
                    )
                    if i == 0:
                        cached = r.cached_tokens
                        if r.prompt_logprobs is not None:
                            prompt_lp = self._logprob_dicts(r.prompt_logprobs, texts)
                    outputs.append(
                        CompletionOutput(
                            index=i,
                            text=r.text,
                            token_ids=r.token_ids,
                            cumulative_logprob=r.cumulative_logprob,
                            logprobs=None
                            if r.logprobs is None
                            else self._logprob_dicts(list(r.logprobs), texts),
                            finish_reason=r.finish_reason,
                            stop_reason=r.stop_reason,
                        )
                    )
                results.append(
                    RequestOutput(
                        request_id=str(self._next_id),
                        prompt=text,
                        prompt_token_ids=ids,
                        outputs=outputs,
                        num_cached_tokens=cached,
                        metrics={"time_s": time.monotonic() - start},
                        prompt_logprobs=prompt_lp,
                    )
                )
                self._next_id += 1
                bar.update(1)
        return results


# -- upstream vLLM, where it is installed ------------------------------------------------------
# With vLLM and hyperdex's platform plugin installed (pip install 'hyperdex[vllm]'), this module
# is a thin shim over vLLM's own LLM and SamplingParams, which run on the LPU through the plugin
# (docs/serving.md, "vLLM"); HYPERDEX_VLLM_ENGINE=hyperdex keeps hyperdex's engine above.
# GuidedDecodingParams has no upstream counterpart in vLLM 0.32: it stays hyperdex's.
from .vllm_plugin.upstream import upstream_llm_args, upstream_vllm  # noqa: E402

_upstream = upstream_vllm()
if _upstream is not None:
    from vllm.logprobs import Logprob  # type: ignore[no-redef]  # noqa: E402, F811
    from vllm.sampling_params import StructuredOutputsParams  # type: ignore[no-redef]  # noqa

    SamplingParams = _upstream.SamplingParams  # type: ignore[misc]  # noqa: F811
    RequestOutput = _upstream.RequestOutput  # type: ignore[misc]  # noqa: F811
    CompletionOutput = _upstream.CompletionOutput  # type: ignore[misc]  # noqa: F811

    class LLM(_upstream.LLM):  # type: ignore[no-redef]  # noqa: F811
        """vLLM's LLM on the LPU; a compiled folder is accepted as the model (its ckpt/ is
        given to vLLM as the config, tokenizer and generation config)."""

        def __init__(self, model: str, **kwargs: Any) -> None:
            super().__init__(**upstream_llm_args(model, kwargs))
