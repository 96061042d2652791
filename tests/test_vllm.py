"""The vLLM-style API (hyperdex.vllm), hybrid mode and transformers' own streamers, on the real
SmolLM2 (real text)."""

from __future__ import annotations

import contextlib
import io

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import numpy as np  # noqa: E402
from serve_helpers import forward_log_softmax, greedy_reference  # noqa: E402
from smollm2 import compiled_smollm2  # noqa: E402

from hyperdex.errors import ConfigError  # noqa: E402
from hyperdex.vllm import LLM, SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return compiled_smollm2(tmp_path_factory)


@pytest.fixture(scope="module")
def llm(path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NUM_LPU_DEVICES", "1")
        mp.delenv("NUM_GPU_DEVICES", raising=False)
        return LLM(model=str(path))


def test_generate_with_vllm_names(llm) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=8)
    outputs = llm.generate(["The capital of France is", "Water boils at"], greedy, use_tqdm=False)
    assert len(outputs) == 2
    first = outputs[0]
    assert "Paris" in first.outputs[0].text
    assert first.prompt == "The capital of France is" and first.finished
    completion = first.outputs[0]
    assert completion.index == 0 and len(completion.token_ids) <= 8
    assert completion.finish_reason in ("stop", "length")
    # the same tokens as the transformers-style API
    want = llm.model.generate([first.prompt_token_ids], max_new_tokens=8, do_sample=False)[0]
    assert completion.token_ids == want[len(first.prompt_token_ids) :][: len(completion.token_ids)]
    assert llm.get_tokenizer().decode(completion.token_ids, skip_special_tokens=True) == (
        completion.text
    )
    # token prompts, one SamplingParams per prompt, stop strings
    again = llm.generate(
        [{"prompt_token_ids": first.prompt_token_ids}, "The capital of France is"],
        [greedy, SamplingParams(temperature=0, max_tokens=8, stop=["Paris"])],
        use_tqdm=False,
    )
    assert again[0].outputs[0].text == completion.text
    assert again[0].num_cached_tokens == len(first.prompt_token_ids) - 1  # prefix cache
    assert "Paris" not in again[1].outputs[0].text
    assert (
        again[1].outputs[0].finish_reason == "stop" and again[1].outputs[0].stop_reason == "Paris"
    )


def test_sampling_n_and_seed(llm) -> None:
    params = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=10, seed=7)
    a = llm.generate("Once upon a time", params, use_tqdm=False)[0]
    b = llm.generate("Once upon a time", params, use_tqdm=False)[0]
    assert len(a.outputs) == 2 and [o.index for o in a.outputs] == [0, 1]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    # as vLLM seeds its children: choice i samples with seed + i
    alone = [
        llm.generate("Once upon a time", SamplingParams(**{**kw, "n": 1}), use_tqdm=False)[0]
        for kw in (dict(params.__dict__, seed=7), dict(params.__dict__, seed=8))
    ]
    assert [o.token_ids for o in a.outputs] == [r.outputs[0].token_ids for r in alone]
    assert a.outputs[0].token_ids != a.outputs[1].token_ids


def test_logprobs_are_log_softmax_of_the_logits(llm) -> None:
    """vLLM's raw_logprobs: the log-softmax of the model's logits, whatever the sampling."""
    params = SamplingParams(
        temperature=0.8, top_k=20, max_tokens=6, seed=3, logprobs=3, prompt_logprobs=2
    )
    out = llm.generate("The capital of France is", params, use_tqdm=False)[0]
    choice = out.outputs[0]
    prompt, tokens = out.prompt_token_ids, choice.token_ids
    want = forward_log_softmax(llm.model, prompt + tokens)
    tok = llm.get_tokenizer()
    assert len(choice.logprobs) == len(tokens)
    for k, (token, step) in enumerate(zip(tokens, choice.logprobs)):
        row = want[len(prompt) - 1 + k]
        assert list(step)[0] == token  # the chosen token first, then the top 3
        assert abs(step[token].logprob - row[token]) < 1e-3
        assert step[token].rank == int((row >= row[token] - 1e-6).sum())
        top = [t for t in step if t != token or step[t].rank <= 3]
        assert sorted(top, key=lambda t: -row[t]) == list(np.argsort(-row)[:3])
        for t, lp in step.items():
            assert abs(lp.logprob - row[t]) < 1e-3 and lp.decoded_token == tok.decode([t])
    assert choice.cumulative_logprob == pytest.approx(
        sum(want[len(prompt) - 1 + k, t] for k, t in enumerate(tokens)), abs=1e-3
    )
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for i in range(1, len(prompt)):
        step = out.prompt_logprobs[i]
        assert list(step)[0] == prompt[i] and len(step) <= 3
        for t, lp in step.items():
            assert abs(lp.logprob - want[i - 1, t]) < 1e-3
    assert (
        llm.generate("Hi", SamplingParams(max_tokens=2), use_tqdm=False)[0].outputs[0].logprobs
        is None
    )
    # the same numbers from generate's output_logits (the logits of each decode step)
    greedy = llm.generate(
        out.prompt, SamplingParams(temperature=0, max_tokens=4, logprobs=0), use_tqdm=False
    )[0].outputs[0]
    traced = llm.model.generate(
        [prompt],
        max_new_tokens=4,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
    )
    for token, step, logits in zip(greedy.token_ids, greedy.logprobs, traced.logits):
        row = torch.log_softmax(torch.tensor(logits[0], dtype=torch.float64), -1)
        assert abs(step[token].logprob - float(row[token])) < 1e-3 and len(step) == 1


def test_penalties_and_logit_bias_follow_vllm(llm) -> None:
    """Greedy tokens with vLLM's penalties equal a reference built from forward logits here:
    presence/frequency penalties subtract from the logits of generated tokens, logit_bias
    adds by token id."""
    tok = llm.get_tokenizer()
    prompt = "Repeat: hello hello hello hello hello"
    ids = tok(prompt).input_ids
    greedy = dict(temperature=0, max_tokens=8, ignore_eos=True)
    plain = llm.generate(prompt, SamplingParams(**greedy), use_tqdm=False)[0].outputs[0]

    def penalized(presence: float, frequency: float):
        def adjust(logits: np.ndarray, generated: list[int]) -> np.ndarray:
            for t in set(generated):
                logits[t] -= presence + frequency * generated.count(t)
            return logits

        return adjust

    for presence, frequency in [(1.5, 0.0), (0.0, 0.7), (0.5, 0.5)]:
        params = SamplingParams(presence_penalty=presence, frequency_penalty=frequency, **greedy)
        got = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
        assert got == greedy_reference(llm.model, ids, 8, penalized(presence, frequency))
        assert got != plain.token_ids  # the penalty changed the answer
    banned = plain.token_ids[0]
    params = SamplingParams(logit_bias={banned: -100.0, 11: 3.0}, **greedy)
    got = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids

    def biased(logits: np.ndarray, generated: list[int]) -> np.ndarray:
        logits[banned] -= 100.0
        logits[11] += 3.0
        return logits

    assert banned not in got and got == greedy_reference(llm.model, ids, 8, biased)


def test_min_p_keeps_tokens_near_the_top(llm) -> None:
    """min_p=1 keeps only the likeliest token, so sampling is greedy; a smaller min_p only
    ever samples tokens at least min_p times as likely as the top one."""
    prompt = "Once upon a time"
    kw = dict(temperature=1.0, max_tokens=10, ignore_eos=True, seed=5)
    greedy = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    free = llm.generate(prompt, SamplingParams(**kw), use_tqdm=False)[0].outputs[0]
    assert free.token_ids != greedy[0].outputs[0].token_ids  # this seed strays from greedy
    strict = llm.generate(prompt, SamplingParams(min_p=1.0, **kw), use_tqdm=False)[0].outputs[0]
    assert strict.token_ids == greedy[0].outputs[0].token_ids
    loose = llm.generate(prompt, SamplingParams(min_p=0.2, logprobs=1, **kw), use_tqdm=False)
    for step, token in zip(loose[0].outputs[0].logprobs, loose[0].outputs[0].token_ids):
        top = max(lp.logprob for lp in step.values())
        assert step[token].logprob >= top + np.log(0.2) - 1e-6


def test_chat(llm) -> None:
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0, max_tokens=16),
        use_tqdm=False,
    )
    assert "Paris" in out[0].outputs[0].text
    assert out[0].prompt.startswith("<|im_start|>")


def test_bad_arguments(llm, path, monkeypatch) -> None:
    for bad, name in [
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(frequency_penalty=-3), "frequency_penalty"),
        (dict(min_p=1.5), "min_p"),
        (dict(logprobs=-1), "logprobs"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(best_of=3), "best_of"),
    ]:
        with pytest.raises(ValueError, match=name):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="greater than max allowed: 20"):
        llm.generate("Hi", SamplingParams(logprobs=21), use_tqdm=False)
    with pytest.raises(NotImplementedError, match=r"temperature=0\) for greedy"):
        llm.beam_search(["Hi"], None)
    with pytest.raises(TypeError, match="no_such_arg"):
        LLM(model=str(path), no_such_arg=1)
    with pytest.raises(ValueError, match="logprobs_mode"):
        LLM(model=str(path), logprobs_mode="processed_logits")
    assert LLM(model=str(path), disable_log_stats=True).max_logprobs == 20  # vLLM's, ignored
    monkeypatch.setenv("NUM_LPU_DEVICES", "2")
    with pytest.raises(ConfigError, match="compiled for 1 LPU"):
        LLM(model=str(path))


def test_hybrid_mode_same_greedy_tokens_as_pure_lpu(llm, path, monkeypatch) -> None:
    monkeypatch.setenv("NUM_LPU_DEVICES", "1")
    monkeypatch.setenv("NUM_GPU_DEVICES", "1")
    hybrid = LLM(model=str(path))
    assert hybrid.model.hybrid is not None
    prompts = ["The capital of France is", "def fibonacci(n):"]
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)]
    got = [o.outputs[0].token_ids for o in hybrid.generate(prompts, greedy, use_tqdm=False)]
    assert got == want


def test_transformers_streamers_work_with_our_generate(llm) -> None:
    from hyperdex.transformers import TextStreamer

    tok = llm.get_tokenizer()
    ids = tok("The capital of France is", return_tensors="pt").input_ids

    def printed(streamer) -> str:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            llm.model.generate(ids, max_new_tokens=12, do_sample=False, streamer=streamer)
        return buf.getvalue()

    theirs = printed(transformers.TextStreamer(tok, skip_prompt=True, skip_special_tokens=True))
    ours = printed(TextStreamer(tok, skip_prompt=True))
    assert theirs == ours and "Paris" in ours
    it = transformers.TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    llm.model.generate(ids, max_new_tokens=12, do_sample=False, streamer=it)
    assert "".join(it) + "\n" == ours
