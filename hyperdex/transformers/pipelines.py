"""``pipeline("text-generation", model)``: transformers' own text-generation pipeline on a
compiled model, with the tokenizer of its compiled folder.

``transformers.pipeline("text-generation", model=lpu_model, tokenizer=tok)`` works as it is
(the model answers what the pipeline asks: ``config``, ``generation_config``,
``can_generate()``, ``device``, ``dtype``, ``generate``); transformers cannot find the
tokenizer of a model object (not even of its own models), which is what this adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from .modeling import AutoModelForCausalLM, LPUModelForCausalLM
from .tokenization import AutoTokenizer


def pipeline(
    task: str,
    model: Union[LPUModelForCausalLM, str, Path],
    tokenizer: Any = None,
    device_map: Any = None,
    **kwargs: Any,
) -> Any:
    """transformers' ``TextGenerationPipeline`` on a compiled model.

    ``model``: a loaded model, or a compiled folder (loaded with
    ``AutoModelForCausalLM.from_pretrained(model, device_map=device_map)``). ``tokenizer``
    defaults to the one in the compiled folder. The pipeline's tensors stay on the CPU, where
    the model takes and returns them (``device`` overrides). Other keywords go to
    ``transformers.pipeline`` (generation options among them)."""
    import transformers

    if task != "text-generation":
        raise ValueError(f"hyperdex runs the 'text-generation' pipeline only, not {task!r}")
    if not isinstance(model, LPUModelForCausalLM):
        model = AutoModelForCausalLM.from_pretrained(model, device_map=device_map)
    elif device_map is not None:
        raise TypeError("device_map applies when model is a folder; this model is loaded")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model.folder)
    kwargs.setdefault("device", model.device)
    return transformers.pipeline(task, model=model, tokenizer=tokenizer, **kwargs)
