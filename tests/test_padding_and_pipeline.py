"""Left-padded batches and transformers' text-generation pipeline (issue 19, points 1 and 2).

``generate`` runs each row of a padded batch without its padding (the device holds one
sequence at a time), so a row gets the tokens it gets alone, in transformers' output layout;
``transformers.pipeline("text-generation", model=lpu_model, tokenizer=tok)`` (and
``hyperdex.transformers.pipeline``, which finds the tokenizer itself) gives
``model.generate``'s tokens, and transformers' own pipeline's text on the Hugging Face model.

The comparisons with transformers are exact: each first checks that transformers' greedy
choice leads its runner-up by more than the fp16 tolerance of tests/test_architectures.py at
every step (:func:`assert_clear_margins`), where the device cannot pick another token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import helpers as H
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from hyperdex.transformers import GenerationConfig, pipeline

# tests/test_architectures.py's fp16 tolerance: a greedy step is decided when transformers'
# top-2 gap exceeds this fraction of the row's largest |logit|.
REL_TOL = 0.02
PAD = 1  # "<pad>" in the tokenizer below
NEW = 8
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant{% endif %}"
)


class Models(NamedTuple):
    hf: Any  # transformers' model (fp32)
    lm: Any  # ours, compiled from the same folder
    tok: Any
    path: str


@pytest.fixture(scope="module")
def models_(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """A tiny random Llama with a word-level tokenizer ("w17" is token 17) that has a pad token
    and a chat template, compiled with its tokenizer."""
    root = tmp_path_factory.mktemp("padding")
    hf = H.make_hf_model("llama", root / "hf", seed=0, std=0.15)
    vocab = {f"w{i}": i for i in range(H.VOCAB)}
    for i, special in enumerate(["<pad>", "<unk>", "user", "assistant"], start=PAD):
        del vocab[f"w{i}"]
        vocab[special] = i
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )
    tok.save_pretrained(str(root / "hf"))
    path = H.compile_model(root / "hf", root / "out", max_length=64)
    return Models(hf, H.load_lpu(path), tok, path)


def assert_clear_margins(hf: Any, sequence: Any, prompt_length: int) -> None:
    """At every generated position of an unpadded ``sequence`` (prompt + new tokens),
    transformers' token leads every other by more than the fp16 tolerance."""
    with torch.no_grad():
        logits = hf(torch.as_tensor(sequence)[None]).logits[0].numpy()
    for t in range(prompt_length - 1, len(sequence) - 1):
        row = logits[t]
        gap = float(H.topk_gaps(row, 1)[0])
        assert int(np.argmax(row)) == int(sequence[t + 1])
        assert gap > REL_TOL * float(np.abs(row).max()), f"near-tie at position {t + 1}: {gap}"


def alone(lm: Any, row: list[int], **kwargs: Any) -> torch.Tensor:
    """The new tokens ``row`` gets as a batch of one."""
    return lm.generate(torch.tensor([row]), do_sample=False, **kwargs)[0, len(row) :]


# -- padded batches ---------------------------------------------------------------------------

# Prompts (here and below) whose greedy continuations transformers decides clearly.
ROWS = [[343, 272], [51, 320, 299, 460, 156]]  # the first gets three pads on the left
LEFT_PADDED = torch.tensor([[PAD, PAD, PAD, 343, 272], [51, 320, 299, 460, 156]])
MASK = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])


def test_left_padded_batch_gives_each_row_its_own_tokens(models_: Models) -> None:
    hf, lm, _, _ = models_
    out = lm.generate(
        LEFT_PADDED, attention_mask=MASK, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD
    )
    # transformers' layout: the input as it was (pads on the left), new tokens appended
    assert out.shape == (2, 5 + NEW) and torch.equal(out[:, :5], LEFT_PADDED)
    for b, row in enumerate(ROWS):
        assert torch.equal(out[b, 5:], alone(lm, row, max_new_tokens=NEW)), b
        assert_clear_margins(hf, np.concatenate([row, out[b, 5:]]), len(row))
    with torch.no_grad():
        ref = hf.generate(
            LEFT_PADDED, attention_mask=MASK, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD
        )
    assert torch.equal(out, ref)
    # The pads matter: attended, they change the first row's tokens.
    attended = lm.generate(LEFT_PADDED[:1], max_new_tokens=NEW, do_sample=False)
    assert not torch.equal(attended[0, 5:], out[0, 5:])


def test_rows_that_stop_early_are_padded_on_the_right(models_: Models) -> None:
    hf, lm, _, _ = models_
    eos = int(alone(lm, ROWS[0], max_new_tokens=NEW)[2])  # the short row's third new token
    kwargs = dict(max_new_tokens=NEW, do_sample=False, pad_token_id=PAD, eos_token_id=eos)
    out = lm.generate(LEFT_PADDED, attention_mask=MASK, **kwargs)
    with torch.no_grad():
        ref = hf.generate(LEFT_PADDED, attention_mask=MASK, **kwargs)
    assert torch.equal(out, ref)
    assert out[0, 5 + 2] == eos and (out[0, 5 + 3 :] == PAD).all()
    assert (out[1, 5:] != PAD).any() and out.shape[1] > 5 + 3


def test_max_length_counts_the_padded_width(models_: Models) -> None:
    """As in transformers: max_length is the batch's total width, pads included."""
    hf, lm, _, _ = models_
    out = lm.generate(LEFT_PADDED, attention_mask=MASK, max_length=9, pad_token_id=PAD)
    with torch.no_grad():
        ref = hf.generate(LEFT_PADDED, attention_mask=MASK, max_length=9, pad_token_id=PAD)
    assert out.shape == ref.shape == (2, 9) and torch.equal(out, ref)


def test_without_a_mask_pad_tokens_are_padding_as_transformers_infers(models_: Models) -> None:
    hf, lm, _, _ = models_
    masked = lm.generate(
        LEFT_PADDED, attention_mask=MASK, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD
    )
    inferred = lm.generate(LEFT_PADDED, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    assert torch.equal(inferred, masked)
    with torch.no_grad():
        ref = hf.generate(LEFT_PADDED, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)
    assert torch.equal(inferred, ref)
    # numpy and lists: the same rules
    assert np.array_equal(
        lm.generate(LEFT_PADDED.numpy(), max_new_tokens=NEW, pad_token_id=PAD), masked.numpy()
    )
    as_lists = lm.generate(LEFT_PADDED.tolist(), attention_mask=MASK.tolist(), max_new_tokens=NEW)
    assert as_lists == masked.tolist()


def test_padding_on_the_right_is_dropped_too(models_: Models) -> None:
    """Where transformers would continue from a right pad (it warns), the row gets its own
    tokens here, after the pads."""
    lm = models_.lm
    right = torch.tensor([[343, 272, PAD, PAD, PAD], [51, 320, 299, 460, 156]])
    out = lm.generate(right, attention_mask=MASK.flip(1), max_new_tokens=NEW, pad_token_id=PAD)
    assert torch.equal(out[0, :5], right[0])
    assert torch.equal(out[0, 5:], alone(lm, ROWS[0], max_new_tokens=NEW))


def test_without_a_mask_a_pad_that_is_eos_cannot_be_inferred(
    models_: Models, caplog: pytest.LogCaptureFixture
) -> None:
    """transformers attends every token then, and warns for a batch; so does hyperdex."""
    _, lm, _, _ = models_
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=PAD, eos_token_id=PAD)
    with caplog.at_level(logging.WARNING, logger="hyperdex"):
        out = lm.generate(LEFT_PADDED, **kwargs)
    assert "cannot be inferred" in caplog.text and "eos" in caplog.text
    assert torch.equal(
        out, lm.generate(LEFT_PADDED, attention_mask=torch.ones_like(MASK), **kwargs)
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hyperdex"):
        lm.generate(LEFT_PADDED, max_new_tokens=2, eos_token_id=0)  # no pad_token_id
    assert "no pad_token_id" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hyperdex"):
        lm.generate(LEFT_PADDED[:1], max_new_tokens=2, eos_token_id=0)  # batch of 1: quiet
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        ([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], "row 0 of the batch is all padding"),
        ([[0, 0, 1, 1, 2], [1, 1, 1, 1, 1]], "1 .* and 0 .* only"),
        ([[1, 1, 1], [1, 1, 1]], "attention_mask has shape"),
    ],
)
def test_bad_masks_say_what_is_wrong(models_: Models, mask: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        models_.lm.generate(LEFT_PADDED, attention_mask=torch.tensor(mask), max_new_tokens=2)


# -- transformers' pipeline -------------------------------------------------------------------

CHAT = [{"role": "user", "content": "w29"}]


def pipelines(m: Models) -> tuple[Any, Any]:
    """(transformers' pipeline on its model, transformers' pipeline on ours)."""
    return (
        transformers.pipeline("text-generation", model=m.hf, tokenizer=m.tok),
        transformers.pipeline("text-generation", model=m.lm, tokenizer=m.tok),
    )


@pytest.mark.parametrize(
    ("inputs", "options"),
    [
        ("w417 w269", {}),
        ("w417 w269", {"return_full_text": False}),
        (["w417 w269", "w134 w119 w41 w325 w14"], {}),
        (["w417 w269", "w134 w119 w41 w325 w14"], {"batch_size": 2}),  # left-padded
        (CHAT, {}),
        ([CHAT, [{"role": "user", "content": "w304 w294"}]], {"batch_size": 2}),
    ],
    ids=["text", "new-text", "texts", "padded-batch", "chat", "chats"],
)
def test_pipeline_gives_transformers_text(models_: Models, inputs: Any, options: dict) -> None:
    theirs, ours = pipelines(models_)
    kwargs = dict(max_new_tokens=NEW, do_sample=False, **options)
    got = ours(inputs, **kwargs)
    assert got == theirs(inputs, **kwargs)
    # The tokens behind it: model.generate's on each prompt as the pipeline encodes it, where
    # transformers decides clearly.
    single = isinstance(inputs, str) or isinstance(inputs[0], dict)
    tensors = ours(inputs, max_new_tokens=NEW, do_sample=False, return_tensors=True)
    for prompt, (record,) in zip([inputs] if single else inputs, [tensors] if single else tensors):
        if isinstance(prompt, str):
            ids = models_.tok(prompt).input_ids
        else:  # a chat, as the pipeline templates it
            ids = models_.tok.apply_chat_template(prompt, add_generation_prompt=True).input_ids
        seq = record["generated_token_ids"]
        assert seq[: len(ids)] == ids
        assert seq[len(ids) :] == alone(models_.lm, ids, max_new_tokens=NEW).tolist()
        assert_clear_margins(models_.hf, np.array(seq), len(ids))


def test_pipeline_samples_by_default_as_transformers_does(models_: Models) -> None:
    """transformers' pipeline defaults (do_sample=True, temperature=0.7) reach generate, and
    sampling follows torch's seed."""
    _, ours = pipelines(models_)
    ids = models_.tok("w134 w119 w41 w325 w14", return_tensors="pt").input_ids
    torch.manual_seed(0)
    text = ours("w134 w119 w41 w325 w14", max_new_tokens=12, return_full_text=False)[0][
        "generated_text"
    ]
    torch.manual_seed(0)
    want = models_.lm.generate(ids, max_new_tokens=12, do_sample=True, temperature=0.7)
    assert text == models_.tok.decode(want[0, ids.shape[1] :], skip_special_tokens=True)
    greedy = ours(
        "w134 w119 w41 w325 w14", max_new_tokens=12, do_sample=False, return_full_text=False
    )
    assert text != greedy[0]["generated_text"]


def test_pipeline_keeps_a_model_s_greedy_setting(models_: Models) -> None:
    """A generation config that sets do_sample false (at its default value) keeps the
    pipeline greedy, on transformers' model as on ours."""
    saved = models_.lm.generation_config, models_.hf.generation_config
    models_.lm.generation_config = GenerationConfig.from_dict({"do_sample": False})
    models_.hf.generation_config = transformers.GenerationConfig(do_sample=False)
    try:
        theirs, ours = pipelines(models_)
        torch.manual_seed(0)
        got = ours("w417 w269", max_new_tokens=NEW)
        assert got == theirs("w417 w269", max_new_tokens=NEW)
        assert got == ours("w417 w269", max_new_tokens=NEW, do_sample=False)
    finally:
        models_.lm.generation_config, models_.hf.generation_config = saved


def test_hyperdex_pipeline_finds_the_tokenizer(models_: Models) -> None:
    """transformers cannot find a model object's tokenizer; hyperdex's pipeline takes the one
    in the compiled folder, from a loaded model or the folder itself."""
    _, ours = pipelines(models_)
    kwargs = dict(max_new_tokens=NEW, do_sample=False)
    want = ours(CHAT, **kwargs)
    with pytest.raises(Exception, match="tokenizer"):
        transformers.pipeline("text-generation", model=models_.lm)
    assert pipeline("text-generation", model=models_.lm)(CHAT, **kwargs) == want
    by_folder = pipeline("text-generation", model=Path(models_.path))
    assert by_folder.device == torch.device("cpu")
    assert by_folder(CHAT, **kwargs) == want
    with pytest.raises(ValueError, match="text-generation"):
        pipeline("fill-mask", model=models_.lm)


def test_no_error_about_the_model_class(models_: Models) -> None:
    """transformers' pipelines check a model's class name against theirs and log an error for
    any other; hyperdex drops that one line (the pipeline runs the model all the same)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    base = logging.getLogger("transformers.pipelines.base")
    base.addHandler(handler)
    try:
        transformers.pipeline("text-generation", model=models_.lm, tokenizer=models_.tok)
        assert not records
        # the filter is what keeps it out
        saved = base.filters[:]
        base.filters.clear()
        try:
            transformers.pipeline("text-generation", model=models_.lm, tokenizer=models_.tok)
        finally:
            base.filters[:] = saved
        assert any("LPUModelForCausalLM" in r.getMessage() for r in records)
    finally:
        base.removeHandler(handler)
