"""What constrained decoding costs: SmolLM2-135M decode ms/token on the emulator, unconstrained
against constrained (a JSON schema, and the lazy tool-call grammar of ``tool_choice="auto"``),
in one process run. Prints a table with the ratios.

    python benchmarks/structured_decode.py [--tokens 96] [--threads N] [--repeat 3]

Decode time per token is measured between the first and the last token of each generation
(prefill excluded), the same number of tokens each way, best of ``--repeat`` runs. The
grammar's own host time per token (the llguidance mask, applying it to the logits, advancing
the matcher) is clocked inside those runs: on a board it is all the host adds, while on the
emulator the device is the same CPU, and its caches are shared with the grammar's.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Optional

import numpy as np

# minItems: the array cannot close (and the grammar end) before the run's last token
PERSONS = {
    "type": "array",
    "minItems": 100,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "city": {"type": "string"},
        },
        "required": ["name", "age", "city"],
    },
}


class _Timed:
    """A grammar matcher that adds up the host time it takes (mask, apply, advance)."""

    def __init__(self, matcher: Any, clock: list[float]) -> None:
        self.matcher, self.clock = matcher, clock

    @property
    def done(self) -> bool:
        return bool(self.matcher.done)

    def constrain_logits(self, logits: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.matcher.constrain_logits(logits)
        self.clock[0] += time.perf_counter() - start
        return out

    def accept(self, token: int) -> None:
        start = time.perf_counter()
        self.matcher.accept(token)
        self.clock[0] += time.perf_counter() - start


def decode_ms(model: Any, tok: Any, ids: list[int], sampling: Any, grammars: Any) -> float:
    """Decode ms/token of one generation: first to last token, prefill excluded."""
    from hyperdex.serving.engine import run_generation

    times = run_generation(model, tok, ids, sampling, grammars=grammars).token_times
    if len(times) < 2:
        raise RuntimeError(f"only {len(times)} tokens were generated")
    return (times[-1] - times[0]) / (len(times) - 1) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HYPERDEX_PROGRESS", "0")

    from hyperdex.serving.engine import Sampling, run_generation
    from hyperdex.serving.structured import Grammar, GrammarCompiler, StructuredOutputsParams
    from hyperdex.serving.tool_calls import ToolChoice, parse_tools, tool_call_grammar
    from hyperdex.tools import AutoCompiler
    from hyperdex.tools.real_weights import smollm2_hf_folder
    from hyperdex.transformers import AutoModelForCausalLM, AutoTokenizer

    path = AutoCompiler().compile(
        model_id=str(smollm2_hf_folder()), max_length=1024, fast_compile=True, progress=False
    )
    model = AutoModelForCausalLM.from_pretrained(path, num_threads=args.threads)
    tok = AutoTokenizer.from_pretrained(path)
    clocks: dict[str, list[float]] = {}

    class TimedCompiler(GrammarCompiler):
        def matcher(self, grammar: Grammar) -> Any:
            return _Timed(super().matcher(grammar), clocks.setdefault(grammar.what, [0.0]))

    grammars = TimedCompiler(tok, model.vocab_size, model.generation_config.eos_token_ids)
    question = "List people as JSON: each with a name, an age and a city."
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = list(tok(text, add_special_tokens=False).input_ids)
    n = args.tokens

    t = time.perf_counter()
    json_grammar = grammars.compile(StructuredOutputsParams(json=PERSONS))
    compile_ms = (time.perf_counter() - t) * 1e3  # the tokenizer's llguidance view included
    tools = parse_tools(
        [{"type": "function", "function": {"name": "lookup", "parameters": PERSONS["items"]}}]
    )
    auto = grammars.compile_lark(
        tool_call_grammar(tools, ToolChoice("auto"), True), "tool-call grammar", "tools"
    )
    # every run makes exactly n tokens: eos is ignored, and the schema (an open array) goes on
    base = Sampling(max_tokens=n, min_tokens=n, temperature=0, ignore_eos=True)
    runs: list[tuple[str, Optional[Any]]] = [
        ("unconstrained", None),
        ("JSON schema (array of objects)", json_grammar),
        ("tool_choice auto (lazy grammar, free text)", auto),
    ]
    best: dict[str, list[float]] = {name: [] for name, _ in runs}
    run_generation(model, tok, ids, base.replace(max_tokens=4, min_tokens=0))  # warm-up
    for _ in range(args.repeat):  # interleaved, so load drifts hit every row alike
        for name, grammar in runs:
            best[name].append(decode_ms(model, tok, ids, base.replace(grammar=grammar), grammars))
    host = {  # grammar host ms/token, clocked during the runs (n - 1 decode steps each)
        name: clocks[grammar.what][0] / (args.repeat * n) * 1e3
        for name, grammar in runs
        if grammar is not None
    }
    constrained = run_generation(
        model, tok, ids, base.replace(grammar=json_grammar), grammars=grammars
    )

    print(
        f"SmolLM2-135M, {len(ids)}-token prompt, {n} new tokens, {args.threads} threads, "
        f"{model.device_description}, best of {args.repeat}; vocabulary {model.vocab_size}"
    )
    print(f"JSON schema compile (first, with the tokenizer's llguidance view): {compile_ms:.0f} ms")
    print(
        f"{'run':43} {'ms/tok min':>10} {'median':>7} {'min vs free':>11} "
        f"{'grammar ms/tok':>14} {'grammar/free':>12}"
    )
    free = min(best[runs[0][0]])
    for name, _ in runs:
        low, mid = min(best[name]), float(np.median(best[name]))
        cost = f"{host[name]:14.3f} {host[name] / free:11.1%}" if name in host else ""
        print(f"{name:43} {low:10.2f} {mid:7.2f} {low / free:10.3f}x {cost}")
    print(f"constrained output starts: {constrained.text[:70]!r}")


if __name__ == "__main__":
    main()
