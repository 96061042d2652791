"""Greedy decoding that nothing on the host processes takes the device's argmax: one call per
decode step, no logits copied to Python (issue 18, point 1); everything that reads or changes
the logits still gets them, and the tokens are the same either way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helpers as H
import numpy as np
import pytest
import torch


class _Recorder:
    """The model's device session, with a record of what each decode call asked for."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.want_logits: list[bool] = []

    def decode(self, token: int, want_logits: bool = True) -> Any:
        self.want_logits.append(bool(want_logits))
        return self._session.decode(token, want_logits)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("on_device")
    H.make_hf_model("llama", root / "hf", seed=4, std=0.15)
    return H.load_lpu(H.compile_model(root / "hf", root / "lpu", max_length=64))


def _record(model: Any) -> _Recorder:
    session = getattr(model._session, "_session", model._session)  # unwrap an earlier one
    model._session = _Recorder(session)
    return model._session


PROMPT = torch.tensor([[5, 17, 99, 3, 42, 7]])


def test_greedy_decodes_with_the_devices_argmax(model: Any) -> None:
    rec = _record(model)
    model.generate(PROMPT, max_new_tokens=12, do_sample=False, min_new_tokens=12, eos_token_id=2)
    # min_new_tokens masks eos on the host: every step needs the logits there.
    assert rec.want_logits and all(rec.want_logits)
    rec = _record(model)
    fast = model.generate(PROMPT, max_new_tokens=12, do_sample=False)
    assert rec.want_logits and not any(rec.want_logits), "logits crossed to Python"
    # The same tokens as when the host takes the argmax of the logits (output_scores needs
    # them), and as the argmax of those logits.
    rec = _record(model)
    slow = model.generate(
        PROMPT, max_new_tokens=12, do_sample=False, output_scores=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    assert all(rec.want_logits)
    assert fast[0].tolist() == slow.sequences[0].tolist()
    steps = [int(np.argmax(s[0].numpy())) for s in slow.scores]
    assert steps == slow.sequences[0, PROMPT.shape[1] :].tolist()


@pytest.mark.parametrize(
    "options",
    [
        {"do_sample": True, "seed": 1},
        {"repetition_penalty": 1.3},
        {"presence_penalty": 0.5},
        {"logit_bias": {3: 2.0}},
    ],
)
def test_what_processes_the_logits_gets_them(model: Any, options: dict[str, Any]) -> None:
    rec = _record(model)
    model.generate(PROMPT, max_new_tokens=6, **options)
    assert rec.want_logits and all(rec.want_logits), options


def test_a_callers_processor_gets_the_logits(model: Any) -> None:
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    rec = _record(model)
    model.generate(
        PROMPT, max_new_tokens=6, do_sample=False,
        logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.0)]),
    )  # fmt: skip
    assert rec.want_logits and all(rec.want_logits)


def test_streamed_greedy_tokens_are_the_devices(model: Any, tmp_path: Path) -> None:
    seen: list[int] = []

    class Streamer:
        def put(self, value: Any) -> None:
            seen.extend(np.asarray(value).reshape(-1).tolist())

        def end(self) -> None:
            pass

    rec = _record(model)
    out = model.generate(PROMPT, max_new_tokens=8, do_sample=False, streamer=Streamer())
    assert not any(rec.want_logits)
    assert seen == out[0].tolist()  # the prompt, then each token as it came
