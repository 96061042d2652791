"""The model object behaves like a transformers model where that makes sense (issue 19,
point 1): ``inputs.to(model.device)``, ``.to()``/``.eval()`` as no-ops, ``.dtype``,
``.name_or_path``, ``.num_parameters()``, and a forward pass that takes ``labels`` (the loss as
transformers computes it), ``return_dict`` and ``use_cache``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helpers as H
import numpy as np
import pytest
import torch
import transformers


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, str]:
    """(transformers' model, ours, the compiled folder) of one tiny Llama."""
    root = tmp_path_factory.mktemp("habits")
    hf = H.make_hf_model("llama", root / "hf", seed=3, std=0.1)
    path = H.compile_model(root / "hf", root / "out", max_length=64)
    return hf, H.load_lpu(path), path


def test_inputs_move_to_model_device_and_come_back(pair: tuple[Any, Any, str]) -> None:
    _, lm, _ = pair
    assert lm.device == torch.device("cpu")
    assert "emulator" in lm.device_description
    ids = torch.tensor([[1, 5, 9, 2]]).to(lm.device)  # the model-card line
    assert lm(ids).logits.device == torch.device("cpu")
    assert lm.to("cuda") is lm and lm.eval() is lm  # accepted, nothing moves
    assert lm.dtype == torch.float16
    assert "emulator" in repr(lm)


def test_name_and_parameter_count(pair: tuple[Any, Any, str]) -> None:
    hf, lm, path = pair
    assert lm.name_or_path == path
    # transformers counts the tied LM head once, as the layer graph does.
    assert lm.num_parameters() == hf.num_parameters()
    embeddings = hf.get_input_embeddings().weight.numel()
    assert lm.num_parameters(exclude_embeddings=True) == hf.num_parameters() - embeddings


def test_labels_give_transformers_loss(pair: tuple[Any, Any, str]) -> None:
    hf, lm, _ = pair
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(0, H.VOCAB, (2, 12)))
    labels = ids.clone()
    labels[0, :4] = -100  # a masked prompt
    labels[1, 7] = -100
    with torch.no_grad():
        ref = hf(ids, labels=labels)
    ours = lm(ids, labels=labels, use_cache=False)
    assert isinstance(ours.loss, torch.Tensor) and ours.loss.dtype == torch.float32
    # The fp16 device's logits move the loss by about their own error (test_accuracy.py).
    assert abs(float(ours.loss) - float(ref.loss)) < 5e-3, (float(ours.loss), float(ref.loss))
    # Positional access skips absent fields, like transformers' ModelOutput.
    assert ours[0] is ours.loss and ours[1] is ours.logits and ours["loss"] is ours.loss
    loss, logits = lm(ids, labels=labels, return_dict=False)
    assert torch.equal(logits, ours.logits) and float(loss) == float(ours.loss)
    # Without labels: no loss, the logits first.
    plain = lm(ids)
    assert plain.loss is None and plain[0] is plain.logits
    with pytest.raises(KeyError):
        plain["loss"]
    # A different label sequence gives a different loss (the loss reads the labels).
    other = labels.clone()
    other[0, 4:] = (other[0, 4:] + 1) % H.VOCAB
    assert abs(float(lm(ids, labels=other).loss) - float(ours.loss)) > 1e-3


def test_bad_labels_and_tensor_keywords_say_what_is_wrong(pair: tuple[Any, Any, str]) -> None:
    _, lm, _ = pair
    ids = torch.tensor([[1, 5, 9, 2]])
    with pytest.raises(ValueError, match="-100"):
        lm(ids, labels=torch.tensor([[1, 5, 9, H.VOCAB + 3]]))
    with pytest.raises(ValueError, match="shape"):
        lm(ids, labels=torch.tensor([[1, 5, 9]]))
    # Any tensor keyword this forward does not take: a TypeError naming it, never
    # "Boolean value of Tensor ... is ambiguous".
    with pytest.raises(TypeError, match="position_ids"):
        lm(ids, position_ids=torch.arange(4)[None])


def test_all_masked_labels_give_nan_like_transformers(pair: tuple[Any, Any, str]) -> None:
    hf, lm, _ = pair
    ids = torch.tensor([[1, 5, 9, 2]])
    labels = torch.full_like(ids, -100)
    with torch.no_grad():
        ref = hf(ids, labels=labels).loss
    assert np.isnan(float(lm(ids, labels=labels).loss)) and np.isnan(float(ref))


def test_numpy_input_gives_a_numpy_loss(pair: tuple[Any, Any, str], tmp_path: Path) -> None:
    _, lm, _ = pair
    ids = np.array([[1, 5, 9, 2, 7]])
    out = lm(ids, labels=ids)
    assert isinstance(out.loss, np.floating) and np.isfinite(out.loss)


def test_generate_takes_a_transformers_generation_config(pair: tuple[Any, Any, str]) -> None:
    _, lm, _ = pair
    ids = torch.tensor([[1, 5, 9, 2]])
    want = lm.generate(ids, max_new_tokens=6, do_sample=False)
    gc = transformers.GenerationConfig(max_new_tokens=6, do_sample=False)
    assert torch.equal(lm.generate(ids, generation_config=gc), want)
    assert lm.generate(ids, generation_config=gc, max_new_tokens=3).shape[1] == 4 + 3
    with pytest.raises(TypeError, match="GenerationConfig"):
        lm.generate(ids, generation_config={"max_new_tokens": 2})


def test_torch_manual_seed_makes_sampling_reproducible(pair: tuple[Any, Any, str]) -> None:
    _, lm, _ = pair
    ids = torch.tensor([[1, 5, 9, 2]])

    def sample(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return lm.generate(ids, max_new_tokens=12, do_sample=True, temperature=2.0, top_k=0)

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))  # 12 draws at temperature 2: never all equal
    # An explicit seed still wins over torch's generator.
    torch.manual_seed(1)
    a = lm.generate(ids, max_new_tokens=8, do_sample=True, seed=5)
    torch.manual_seed(2)
    assert torch.equal(a, lm.generate(ids, max_new_tokens=8, do_sample=True, seed=5))


def test_generate_output_indexes_like_transformers(pair: tuple[Any, Any, str]) -> None:
    _, lm, _ = pair
    ids = torch.tensor([[1, 5, 9, 2]])
    out = lm.generate(ids, max_new_tokens=3, return_dict_in_generate=True, output_logits=True)
    assert isinstance(out, transformers.utils.ModelOutput)  # what transformers code checks
    assert out[0] is out.sequences and out["sequences"] is out.sequences
    assert out[1] is out.logits and list(out.keys()) == ["sequences", "logits"]
    with pytest.raises(KeyError):
        out["scores"]
    fwd = lm(ids, labels=ids)
    assert isinstance(fwd, transformers.utils.ModelOutput)
    assert fwd[0] is fwd.loss and fwd[1] is fwd.logits  # transformers' order: loss first
    assert lm(ids)[0] is lm(ids).logits or torch.equal(lm(ids)[0], lm(ids).logits)


def test_config_tells_the_compiled_context_and_dtype(pair: tuple[Any, Any, str]) -> None:
    hf, lm, _ = pair
    assert lm.config.max_position_embeddings == lm.max_length == 64
    assert lm.config.checkpoint_max_position_embeddings == hf.config.max_position_embeddings
    assert lm.config.dtype == lm.config.torch_dtype == "float16"
    d = lm.config.to_dict()
    assert d["max_position_embeddings"] == 64 and d["dtype"] == "float16"


class BanGreedy(transformers.LogitsProcessor):
    """Forbids whatever token leads: greedy then picks the runner-up."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[0, scores[0].argmax()] = -float("inf")
        return scores


def test_transformers_logits_processors_and_stopping_criteria(pair: tuple[Any, Any, str]) -> None:
    """transformers' processor and criterion lists run on the host after hyperdex's own
    processing, with the same tokens as transformers' generate given the same lists."""
    hf, lm, _ = pair
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    plain = lm.generate(ids, max_new_tokens=8, do_sample=False)

    banned = lm.generate(ids, max_new_tokens=8, do_sample=False, logits_processor=[BanGreedy()])
    assert not torch.equal(banned[:, 5:], plain[:, 5:])
    with torch.no_grad():
        ref = hf.generate(
            ids,
            max_new_tokens=8,
            do_sample=False,
            logits_processor=transformers.LogitsProcessorList([BanGreedy()]),
        )
    assert torch.equal(banned, ref)
    # A stopping criterion ends the sequence where it says.
    stop = transformers.StoppingCriteriaList([transformers.MaxLengthCriteria(max_length=5 + 3)])
    assert lm.generate(ids, max_new_tokens=8, stopping_criteria=stop).shape[1] == 5 + 3


def test_generate_yield_takes_processors_and_criteria_as_generate(
    pair: tuple[Any, Any, str],
) -> None:
    """The streaming generator runs transformers' lists as generate does."""
    _, lm, _ = pair
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    banned = lm.generate(ids, max_new_tokens=8, do_sample=False, logits_processor=[BanGreedy()])
    streamed = lm.generate_yield(ids, max_new_tokens=8, logits_processor=[BanGreedy()])
    assert list(streamed) == banned[0, 5:].tolist()
    assert banned[0, 5:].tolist() != lm.generate(ids, max_new_tokens=8)[0, 5:].tolist()
    stop = transformers.StoppingCriteriaList([transformers.MaxLengthCriteria(max_length=5 + 3)])
    assert len(list(lm.generate_yield(ids, max_new_tokens=8, stopping_criteria=stop))) == 3
