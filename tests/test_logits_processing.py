"""Logits pipeline, token choice and stopping, checked against transformers' own classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hyperdex.transformers import generation
from hyperdex.transformers.generation import (
    GenerationConfig,
    GenerationSession,
    LogitsPipeline,
    StoppingCriteria,
    TokenSampler,
    apply_logit_bias,
    apply_min_new_tokens,
    apply_min_p,
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    greedy_token,
    sample_token,
)


def _random_scores(rng: np.random.Generator, shape: tuple[int, ...], n_inf: int = 0) -> np.ndarray:
    scores = (rng.standard_normal(shape) * rng.uniform(0.5, 4.0)).astype(np.float32)
    if n_inf:
        flat = scores.reshape(-1, shape[-1])
        for row in flat:
            row[rng.choice(shape[-1], size=n_inf, replace=False)] = -np.inf
    return scores


def _hf(processor, scores: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Run a transformers processor on a numpy [batch, vocab] array."""
    ids_t = torch.from_numpy(ids) if ids is not None else torch.zeros((len(scores), 1)).long()
    return processor(ids_t, torch.from_numpy(scores.copy())).numpy()


# -- processors vs transformers, elementwise (-inf positions included) -------------------------


@pytest.mark.parametrize("penalty", [0.5, 1.2, 2.0])
def test_repetition_penalty_matches_transformers(penalty: float) -> None:
    rng = np.random.default_rng(1)
    for vocab, n in [(50, 30), (1000, 200), (7, 20)]:
        scores = _random_scores(rng, (3, vocab), n_inf=2)
        ids = rng.integers(0, vocab + 3, size=(3, n))  # some ids beyond the vocab
        expected = _hf(RepetitionPenaltyLogitsProcessor(penalty), scores, ids)
        np.testing.assert_array_equal(apply_repetition_penalty(scores, ids, penalty), expected)
        for row in range(3):
            got = apply_repetition_penalty(scores[row], ids[row], penalty)
            np.testing.assert_array_equal(got, expected[row])


def test_repetition_penalty_does_not_modify_input() -> None:
    scores = np.array([1.0, -1.0, 2.0], dtype=np.float32)
    out = apply_repetition_penalty(scores, np.array([0, 1, 1]), 2.0)
    np.testing.assert_array_equal(out, [0.5, -2.0, 2.0])
    np.testing.assert_array_equal(scores, [1.0, -1.0, 2.0])


@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 1.3, 5.0])
def test_temperature_matches_transformers(temperature: float) -> None:
    scores = _random_scores(np.random.default_rng(2), (4, 500), n_inf=5)
    expected = _hf(TemperatureLogitsWarper(temperature), scores)
    np.testing.assert_array_equal(apply_temperature(scores, temperature), expected)


@pytest.mark.parametrize("top_k", [1, 2, 5, 50, 499, 500, 600])
@pytest.mark.parametrize("min_keep", [1, 3])
def test_top_k_matches_transformers(top_k: int, min_keep: int) -> None:
    rng = np.random.default_rng(3)
    scores = _random_scores(rng, (4, 500), n_inf=3)
    # coarse values give many ties with the k-th score; transformers keeps all of them
    tied = np.round(scores * 2) / 2
    for s in (scores, tied):
        expected = _hf(TopKLogitsWarper(top_k, min_tokens_to_keep=min_keep), s)
        np.testing.assert_array_equal(apply_top_k(s, top_k, min_keep), expected)
    kept = np.isfinite(apply_top_k(tied[0], 5)).sum()
    assert kept >= 5


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.7, 0.9, 0.95, 0.999, 1.0])
@pytest.mark.parametrize("min_keep", [1, 3])
def test_top_p_matches_transformers(top_p: float, min_keep: int) -> None:
    rng = np.random.default_rng(4)
    for vocab in (5, 16, 300, 3000):
        scores = _random_scores(rng, (3, vocab), n_inf=vocab // 5)
        expected = _hf(TopPLogitsWarper(top_p, min_tokens_to_keep=min_keep), scores)
        np.testing.assert_array_equal(apply_top_p(scores, top_p, min_keep), expected)


def test_top_p_ties_match_transformers_where_torch_sort_is_stable() -> None:
    # torch sorts <= 16 elements stably, so ties straddling the cut are comparable there
    scores = np.zeros((1, 8), dtype=np.float32)
    scores[0, 5] = 1.0
    for top_p in (0.3, 0.5, 0.6, 0.8):
        expected = _hf(TopPLogitsWarper(top_p), scores)
        np.testing.assert_array_equal(apply_top_p(scores, top_p), expected)
    uniform = np.zeros((1, 4), dtype=np.float32)  # cumulative 0.25, 0.5, 0.75, 1.0 exactly
    expected = _hf(TopPLogitsWarper(0.5), uniform)
    np.testing.assert_array_equal(apply_top_p(uniform, 0.5), expected)
    assert np.isinf(expected).sum() == 2


def test_top_p_after_top_k_matches_transformers() -> None:
    rng = np.random.default_rng(5)
    scores = _random_scores(rng, (2, 20000))
    hf = LogitsProcessorList([TopKLogitsWarper(50), TopPLogitsWarper(0.8)])
    expected = _hf(hf, scores)
    np.testing.assert_array_equal(apply_top_p(apply_top_k(scores, 50), 0.8), expected)


@pytest.mark.parametrize("scale", [1.0, 3.0, 8.0])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p_large_vocab_fast_path_matches_full_sort(monkeypatch, scale, top_p) -> None:
    rng = np.random.default_rng(6)
    scores = (rng.standard_normal(50000) * scale).astype(np.float32)
    fast = apply_top_p(scores, top_p)
    monkeypatch.setattr(generation, "_TOP_P_DIRECT", 0)
    monkeypatch.setattr(generation, "_TOP_P_CANDIDATES", ())
    full = apply_top_p(scores, top_p)
    np.testing.assert_array_equal(fast, full)
    expected = _hf(TopPLogitsWarper(top_p), scores[None])[0]
    # float32 sums over 50k terms may round differently at the cut: allow one token
    assert (fast != expected).sum() <= 1


@pytest.mark.parametrize("eos", [3, [3, 7], [3, 1000]])
def test_min_new_tokens_matches_transformers(eos) -> None:
    rng = np.random.default_rng(7)
    scores = _random_scores(rng, (2, 100))
    eos_list = [eos] if isinstance(eos, int) else eos
    for prompt_len, total_len in [(4, 4), (4, 8), (4, 9), (4, 12)]:
        ids = np.zeros((2, total_len), dtype=np.int64)
        expected = _hf(MinNewTokensLengthLogitsProcessor(prompt_len, 5, eos), scores, ids)
        got = apply_min_new_tokens(scores, total_len - prompt_len, 5, eos_list)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 0.9, 1.0])
def test_min_p_matches_transformers(min_p: float) -> None:
    rng = np.random.default_rng(11)
    for vocab in (7, 300, 5000):
        scores = _random_scores(rng, (3, vocab), n_inf=vocab // 7)
        expected = _hf(MinPLogitsWarper(min_p), scores)
        np.testing.assert_array_equal(apply_min_p(scores, min_p), expected)
        if min_p == 1.0:  # only the likeliest survives
            assert (np.isfinite(expected).sum(axis=-1) == 1).all()


def test_logit_bias_adds_by_token_id() -> None:
    scores = np.array([1.0, 2.0, -np.inf, 0.5], dtype=np.float32)
    got = apply_logit_bias(scores, {0: 3.0, 2: 5.0, 3: -100.0})
    np.testing.assert_array_equal(got, [4.0, 2.0, -np.inf, -99.5])
    np.testing.assert_array_equal(scores, [1.0, 2.0, -np.inf, 0.5])  # a new array
    # transformers' sequence bias with one-token sequences is the same thing
    rng = np.random.default_rng(12)
    batch = _random_scores(rng, (2, 50))
    bias = {3: 1.5, 17: -2.25, 49: 0.75}
    hf = SequenceBiasLogitsProcessor(sequence_bias=[[[k], v] for k, v in bias.items()])
    np.testing.assert_array_equal(apply_logit_bias(batch, bias), _hf(hf, batch))
    with pytest.raises(ValueError, match="token id 4, outside the vocab"):
        apply_logit_bias(scores, {4: 1.0})


def test_presence_and_frequency_penalties_count_generated_tokens() -> None:
    rng = np.random.default_rng(13)
    scores = _random_scores(rng, (20,))
    generated = np.array([3, 5, 3, 3, 19, 25])  # 25 is past the vocab: ignored
    got = apply_presence_frequency_penalty(scores, generated, 0.5, 0.25)
    expected = scores.astype(np.float64)
    for token, count in {3: 3, 5: 1, 19: 1}.items():  # OpenAI: logit - count*f - (count>0)*p
        expected[token] -= count * 0.25 + 0.5
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(apply_presence_frequency_penalty(scores, [], 2, 2), scores)


def test_pipeline_applies_vllm_options_in_vllm_order() -> None:
    """logit_bias, then penalties (repetition on prompt + output, presence/frequency on the
    output only), then temperature, min-p, top-k, top-p: vLLM's sampler, rebuilt in torch."""
    rng = np.random.default_rng(14)
    prompt_len, vocab = 5, 200
    cfg = GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_k=40,
        top_p=0.8,
        min_p=0.1,
        repetition_penalty=1.3,
        presence_penalty=0.6,
        frequency_penalty=0.4,
        logit_bias={7: 2.0, 9: -1.5},
        sampling_order="vllm",
    )
    differs = 0
    for new in range(6):
        ids = rng.integers(0, 20, size=prompt_len + new)  # small ids: many repeats
        logits = _random_scores(rng, (vocab,)) * 3
        x = torch.from_numpy(logits.copy())[None].double()
        x[0, 7] += 2.0
        x[0, 9] -= 1.5
        seen = torch.zeros(vocab, dtype=torch.bool)
        seen[torch.from_numpy(ids)] = True
        x[0, seen] = torch.where(x[0, seen] > 0, x[0, seen] / 1.3, x[0, seen] * 1.3)
        counts = torch.bincount(torch.from_numpy(ids[prompt_len:]), minlength=vocab).double()
        x[0] -= 0.4 * counts + 0.6 * (counts > 0).double()
        x = x / 0.7
        probs = torch.softmax(x, -1)
        x[probs < 0.1 * probs.max()] = -float("inf")
        x = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(40)(None, x))
        got = LogitsPipeline(cfg, prompt_len)(ids, logits)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(x[0].numpy()))
        finite = np.isfinite(got)
        np.testing.assert_allclose(got[finite], x[0].numpy()[finite], rtol=1e-5, atol=1e-5)
        transformers_order = LogitsPipeline(cfg.copy(sampling_order="transformers"), prompt_len)
        differs += int(not np.array_equal(np.isfinite(transformers_order(ids, logits)), finite))
    assert differs  # the order matters here: min-p before top-p keeps fewer tokens


def _hf_processors(cfg: GenerationConfig, prompt_len: int) -> LogitsProcessorList:
    """transformers' list for cfg, in the order of generation/utils.py _get_logits_processor."""
    procs = LogitsProcessorList()
    if cfg.logit_bias:
        bias = [[[k], v] for k, v in cfg.logit_bias.items()]
        procs.append(SequenceBiasLogitsProcessor(sequence_bias=bias))
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    eos = list(cfg.eos_token_ids)
    if cfg.min_new_tokens > 0 and eos:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, cfg.min_new_tokens, eos))
    if cfg.do_sample:
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k != 0:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
        if cfg.min_p is not None:
            procs.append(MinPLogitsWarper(cfg.min_p))
    return procs


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"repetition_penalty": 1.3, "min_new_tokens": 3, "eos_token_id": [2, 9]},
        {"do_sample": True},
        {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1},
        {"do_sample": True, "temperature": 1.5, "top_k": 0, "top_p": 0.8},
        {"do_sample": True, "top_k": 5, "min_new_tokens": 2, "eos_token_id": 4},
        {"do_sample": True, "top_p": 0.9, "min_p": 0.2, "logit_bias": {4: 3.0, 250: -2.0}},
        {"do_sample": False, "min_p": 0.5, "logit_bias": {4: 30.0}},  # min_p: sampling only
        # sampling knobs set but do_sample=False: ignored, as in transformers
        {"do_sample": False, "temperature": 0.1, "top_k": 2, "top_p": 0.1},
    ],
)
def test_pipeline_matches_transformers_processor_list(options) -> None:
    rng = np.random.default_rng(8)
    cfg = GenerationConfig(**options)
    prompt_len = 6
    for new in range(5):
        ids = rng.integers(0, 300, size=prompt_len + new)
        logits = _random_scores(rng, (300,))
        expected = _hf(_hf_processors(cfg, prompt_len), logits[None], ids[None])[0]
        got = LogitsPipeline(cfg, prompt_len)(ids, logits)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(logits, logits.copy())  # input untouched


def test_pipeline_rejects_bad_logits() -> None:
    pipe = LogitsPipeline(GenerationConfig(), 1)
    with pytest.raises(FloatingPointError, match="NaN"):
        pipe(np.array([1]), np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match=r"logits must have shape \[vocab\]"):
        pipe(np.array([1]), np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(TypeError, match="logits must be a float array"):
        pipe(np.array([1]), np.zeros(5, dtype=np.int64))


def test_warper_argument_errors() -> None:
    scores = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError, match="top_k must be an int > 0, got 0"):
        apply_top_k(scores, 0)
    with pytest.raises(ValueError, match=r"top_p must be a float in \(0, 1\], got 1.5"):
        apply_top_p(scores, 1.5)
    with pytest.raises(ValueError, match="temperature must be a finite float > 0, got 0"):
        apply_temperature(scores, 0)
    with pytest.raises(ValueError, match="min_tokens_to_keep must be an int >= 1"):
        apply_top_p(scores, 0.5, min_tokens_to_keep=0)


# -- token choice ------------------------------------------------------------------------------


def test_greedy_is_first_max_like_torch_argmax() -> None:
    scores = np.array([0.5, 2.0, -1.0, 2.0, 2.0], dtype=np.float32)
    assert greedy_token(scores) == int(torch.argmax(torch.from_numpy(scores))) == 1
    rng = np.random.default_rng(9)
    for _ in range(20):
        s = np.round(_random_scores(rng, (64,)))
        assert greedy_token(s) == int(torch.argmax(torch.from_numpy(s)))


def test_sampling_same_seed_same_tokens_different_seeds_differ() -> None:
    scores = _random_scores(np.random.default_rng(10), (1000,)) * 0.1

    def draws(seed: int) -> list[int]:
        sampler = TokenSampler(do_sample=True, seed=seed)
        return [sampler(scores) for _ in range(50)]

    assert draws(123) == draws(123)
    assert draws(123) != draws(124)
    unseeded = TokenSampler(do_sample=True)
    assert [unseeded(scores) for _ in range(50)] != [unseeded(scores) for _ in range(50)]


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_sampling_distribution_matches_softmax() -> None:
    scores = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -np.inf, 1.5], dtype=np.float32)
    probs = torch.softmax(torch.from_numpy(scores).double(), -1).numpy()
    rng = np.random.default_rng(11)
    draws = np.array([sample_token(scores, rng) for _ in range(20000)])
    counts = np.bincount(draws, minlength=scores.size).astype(np.float64)
    assert counts[6] == 0  # a -inf token is never drawn
    live = probs > 0
    # 6 degrees of freedom: P(chi2 > 22.46) = 0.001
    assert _chi_square(counts[live], probs[live]) < 22.46
    # and it can fail: a skewed distribution is rejected
    skewed = probs[live] * np.linspace(0.8, 1.2, live.sum())
    assert _chi_square(counts[live], skewed / skewed.sum()) > 22.46


def test_sampled_tokens_follow_transformers_processed_distribution() -> None:
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=6, top_p=0.9, seed=0)
    logits = np.array([3.0, 2.5, 2.4, 2.0, 1.0, 0.9, 0.8, -1.0, 2.2, 0.1], dtype=np.float32)
    ids = np.array([1, 2])
    processed = _hf(_hf_processors(cfg, 2), logits[None], ids[None])
    probs = torch.softmax(torch.from_numpy(processed).double(), -1).numpy()[0]
    sampler = TokenSampler(True, seed=0)
    pipe = LogitsPipeline(cfg, 2)
    draws = np.array([sampler(pipe(ids, logits)) for _ in range(5000)])
    counts = np.bincount(draws, minlength=logits.size).astype(np.float64)
    live = probs > 0
    assert np.all(counts[~live] == 0)
    dof = int(live.sum()) - 1
    assert dof >= 2
    assert _chi_square(counts[live], probs[live]) < {2: 13.82, 3: 16.27, 4: 18.47}[dof]


def test_sampling_with_nothing_left_raises() -> None:
    with pytest.raises(ValueError, match="all scores are -inf"):
        sample_token(np.full(4, -np.inf, dtype=np.float32), np.random.default_rng(0))


# -- stopping and sessions ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        ["hello world, the world is big.", "stop here and there.", "crab 🦀 time"], trainer
    )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def _forced(token: int, vocab: int = 400) -> np.ndarray:
    logits = np.zeros(vocab, dtype=np.float32)
    logits[token] = 10.0
    return logits


def _run(cfg: GenerationConfig, prompt: list[int], script: list[int], **kw) -> GenerationSession:
    """Generate greedily with logits that force `script`, until the session stops."""
    session = GenerationSession(cfg, np.array(prompt), **kw)
    for token in script:
        if session.done:
            break
        assert session.step(_forced(token)) == token
    return session


def test_eos_stops_and_is_kept() -> None:
    session = _run(GenerationConfig(eos_token_id=[7, 8], max_new_tokens=10), [1, 2], [3, 8, 4])
    assert session.finish_reason == "eos"
    assert session.output_ids.tolist() == [1, 2, 3, 8]
    assert session.new_ids.tolist() == [3, 8]
    with pytest.raises(RuntimeError, match="already finished"):
        session.step(_forced(1))


def test_stop_token_ids_and_length() -> None:
    session = _run(GenerationConfig(stop=[5], max_new_tokens=10), [1], [3, 5, 4])
    assert session.finish_reason == "stop" and session.new_ids.tolist() == [3, 5]
    session = _run(GenerationConfig(max_new_tokens=3), [1], [3, 4, 5, 6])
    assert session.finish_reason == "length" and session.new_ids.tolist() == [3, 4, 5]
    session = _run(GenerationConfig(max_length=4), [1, 2], [3, 4, 5, 6])
    assert session.finish_reason == "length" and session.new_ids.tolist() == [3, 4]
    session = _run(GenerationConfig(), [1] * 30, [3] * 40)
    assert len(session.new_ids) == 20  # transformers' default: 20 new tokens
    session = GenerationSession(GenerationConfig(max_new_tokens=0), np.array([[1, 2]]))
    assert session.done and session.finish_reason == "length"


def test_min_new_tokens_suppresses_eos_and_stop_ids() -> None:
    cfg = GenerationConfig(eos_token_id=7, stop=[9], min_new_tokens=2, max_new_tokens=10)
    session = GenerationSession(cfg, np.array([1]))
    logits = np.zeros(20, dtype=np.float32)
    logits[[7, 9]] = 10.0
    logits[3] = 5.0
    assert session.step(logits) == 3  # eos and stop id are -inf for the first 2 tokens
    assert session.step(logits) == 3
    assert session.step(logits) == 7
    assert session.finish_reason == "eos"


def test_stop_strings(tokenizer) -> None:
    def script(text: str) -> list[int]:
        return tokenizer.encode(text)

    prompt = script("stop here and")
    cfg = GenerationConfig(stop=["world"], max_new_tokens=30)
    # "world" split over several tokens stops at the token that completes it
    session = _run(cfg, prompt, script(" the wor") + script("ld is big"), tokenizer=tokenizer)
    assert session.finish_reason == "stop"
    text = tokenizer.decode(session.new_ids)
    assert text.endswith("ld") or "world" in text
    assert "world" not in tokenizer.decode(session.new_ids[:-1])

    # text already in the prompt never matches; the prompt's tail can start a match
    cfg = GenerationConfig(stop=["stop"], max_new_tokens=5)
    session = _run(cfg, prompt, script(" there. ") * 3, tokenizer=tokenizer)
    assert session.finish_reason == "length"
    cfg = GenerationConfig(stop=["world"], max_new_tokens=5)
    session = _run(cfg, script("hello wor"), script("ld is big"), tokenizer=tokenizer)
    assert session.finish_reason == "stop" and len(session.new_ids) == 1


def test_stop_string_on_split_multibyte_character(tokenizer) -> None:
    # the octopus is not in the training text: its 4 UTF-8 bytes stay separate tokens
    tokens = tokenizer.encode(" 🐙 time")
    octopus = tokenizer.encode(" 🐙")
    assert len(octopus) > 2
    cfg = GenerationConfig(stop=["🐙"], max_new_tokens=20)
    session = _run(cfg, tokenizer.encode("crab"), tokens, tokenizer=tokenizer)
    assert session.finish_reason == "stop"
    assert session.new_ids.tolist() == octopus


def test_stop_strings_need_a_tokenizer() -> None:
    with pytest.raises(ValueError, match=r"stop strings \['END'\] need a tokenizer"):
        GenerationSession(GenerationConfig(stop=["END"]), np.array([1]))
    criteria = StoppingCriteria(GenerationConfig(stop=[4]), 1)
    assert criteria(np.array([1, 4])) == "stop" and criteria(np.array([1, 3])) is None


def test_prompt_too_long_for_max_length_raises() -> None:
    with pytest.raises(ValueError, match="max_length counts the prompt"):
        GenerationSession(GenerationConfig(max_length=3), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="prompt_ids must be a non-empty int array"):
        GenerationSession(GenerationConfig(), np.array([], dtype=np.int64))


class RecordingStreamer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def put(self, value) -> None:
        self.calls.append(("put", np.asarray(value).tolist()))

    def end(self) -> None:
        self.calls.append(("end", None))


def test_session_drives_streamer_like_generate() -> None:
    streamer = RecordingStreamer()
    session = _run(GenerationConfig(max_new_tokens=2), [5, 6], [3, 4], streamer=streamer)
    session.close()  # idempotent after the end
    assert streamer.calls == [("put", [[5, 6]]), ("put", [3]), ("put", [4]), ("end", None)]
    streamer = RecordingStreamer()
    session = GenerationSession(
        GenerationConfig(max_new_tokens=9), np.array([5]), streamer=streamer
    )
    session.step(_forced(3))
    session.close()  # e.g. the device failed: the consumer still sees the end
    assert streamer.calls[-1] == ("end", None) and len(streamer.calls) == 3


def test_put_step_gets_raw_logits_and_processed_scores_before_put() -> None:
    calls: list = []

    class Recorder(RecordingStreamer):
        def put_step(self, token, logits, scores) -> None:
            calls.append((token, np.array(logits), np.array(scores)))
            self.calls.append(("step", token))

    streamer = Recorder()
    cfg = GenerationConfig(max_new_tokens=2, logit_bias={0: 5.0})
    session = GenerationSession(cfg, np.array([1]), streamer=streamer)
    logits = np.array([[1.0, 2.0, -1.0, 0.5]], dtype=np.float32)
    assert session.step(logits) == 0  # the bias made 0 the likeliest
    assert streamer.calls[1:] == [("step", 0), ("put", [0])]
    token, raw, scores = calls[0]
    np.testing.assert_array_equal(raw, logits[0])  # unprocessed, [vocab]
    np.testing.assert_array_equal(scores, [6.0, 2.0, -1.0, 0.5])


def test_vllm_options_are_validated() -> None:
    for bad, match in [
        ({"min_p": 1.5}, "min_p must be None or a float in"),
        ({"presence_penalty": 2.5}, "presence_penalty must be a float in"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty must be a float in"),
        ({"logit_bias": {1: float("inf")}}, "must be a finite number"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias key"),
        ({"sampling_order": "torch"}, "sampling_order must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            GenerationConfig(**bad)
    cfg = GenerationConfig(logit_bias={"5": 1})  # JSON keys are strings
    assert cfg.logit_bias == {5: 1.0}
    copy = cfg.copy(min_p=0.2)
    copy.logit_bias[6] = 2.0
    assert cfg.logit_bias == {5: 1.0} and copy.min_p == 0.2  # copies do not share the dict


def test_last_scores_are_the_processed_scores() -> None:
    logits = np.array([[1.0, 2.0, -1.0, 0.5]], dtype=np.float32)
    session = GenerationSession(GenerationConfig(max_new_tokens=3), np.array([1]))
    assert session.step(logits) == 1
    np.testing.assert_array_equal(session.last_scores, logits[0])
    assert not np.may_share_memory(session.last_scores, logits)
    cfg = GenerationConfig(max_new_tokens=3, repetition_penalty=2.0)
    session = GenerationSession(cfg, np.array([1]))
    assert session.step(logits) == 0  # 1 is penalized to a tie with 0: the first wins
    np.testing.assert_array_equal(session.last_scores, [1.0, 1.0, -1.0, 0.5])
    assert session.step(logits) == 1
    np.testing.assert_array_equal(session.last_scores, [0.5, 1.0, -1.0, 0.5])


def test_session_works_with_transformers_streamer(tokenizer, capsys) -> None:
    ids = tokenizer.encode("hello world, the world is big.")
    streamer = transformers.TextStreamer(tokenizer, skip_prompt=True)
    session = _run(GenerationConfig(max_new_tokens=50), ids[:2], ids[2:], streamer=streamer)
    session.close()  # the script ran out before the budget
    assert capsys.readouterr().out == tokenizer.decode(ids[2:]) + "\n"


def test_seeded_sessions_reproduce() -> None:
    cfg = GenerationConfig(do_sample=True, top_k=0, max_new_tokens=30, seed=7)
    logits = _random_scores(np.random.default_rng(12), (50,)) * 0.2

    def run(c: GenerationConfig) -> list[int]:
        session = GenerationSession(c, np.array([1]))
        while not session.done:
            session.step(logits)
        return session.new_ids.tolist()

    assert run(cfg) == run(cfg)
    assert run(cfg) != run(cfg.copy(seed=8))


# -- end to end: greedy search equals transformers' generate on a tiny random model ------------


@pytest.fixture(scope="module")
def tiny_model() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        initializer_range=0.3,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _our_generate(model, prompt: list[int], cfg: GenerationConfig) -> GenerationSession:
    session = GenerationSession(cfg, np.array(prompt), max_position_embeddings=64)
    while not session.done:
        with torch.no_grad():
            logits = model(torch.from_numpy(session.output_ids[None])).logits[0, -1]
        session.step(logits.float().numpy())
    return session


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")
def test_greedy_matches_transformers_generate(tiny_model) -> None:
    prompt = [1, 5, 7, 9]
    ids = torch.tensor([prompt])
    free = _our_generate(tiny_model, prompt, GenerationConfig())  # default: 20 new tokens
    eos = int(free.new_ids[2])  # a token greedy search reaches early
    cases = [
        ({}, None),
        ({"max_new_tokens": 12, "repetition_penalty": 1.5}, None),
        ({"max_length": 10, "repetition_penalty": 0.7}, None),
        ({"max_new_tokens": 10}, eos),
        ({"max_new_tokens": 10, "min_new_tokens": 5}, eos),
    ]
    for options, eos_id in cases:
        ours = (
            free
            if not options
            else _our_generate(tiny_model, prompt, GenerationConfig(eos_token_id=eos_id, **options))
        )
        expected = tiny_model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=False,
            pad_token_id=0, eos_token_id=eos_id, **options,
        )  # fmt: skip
        assert ours.output_ids.tolist() == expected[0].tolist(), options
        if eos_id is not None and "min_new_tokens" not in options:
            assert ours.finish_reason == "eos" and len(ours.new_ids) == 3
