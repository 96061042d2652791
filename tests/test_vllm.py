"""The vLLM-style API (hyperdex.vllm), hybrid mode and transformers' own streamers, on the real
SmolLM2 (real text)."""

from __future__ import annotations

import contextlib
import io

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

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


def test_chat(llm) -> None:
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0, max_tokens=16),
        use_tqdm=False,
    )
    assert "Paris" in out[0].outputs[0].text
    assert out[0].prompt.startswith("<|im_start|>")


def test_bad_arguments(path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="presence_penalty"):
        SamplingParams(presence_penalty=0.5)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(TypeError, match="no_such_arg"):
        LLM(model=str(path), no_such_arg=1)
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
