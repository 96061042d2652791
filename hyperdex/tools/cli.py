"""``hdex-compile``: compile a Hugging Face model for LPU devices from the command line.

On a terminal it asks for what the flags did not give (model id, number of devices,
quantization), shows each default in brackets (Enter takes it) and re-asks on invalid answers.
Without a terminal, or with ``--yes``, it never prompts: ``--model`` is required and the rest
take their defaults (1 device, no quantization: fp16).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from .. import __version__
from ..errors import ConfigError, HyperdexError
from ..extras import require_extra
from ..paths import compiled_dir, default_prefix
from .quantization import resolve_quantization

EXIT_CODES = """exit codes:
  0    compiled
  1    the model or the options were rejected (the message says what and why)
  2    bad command line (a missing or malformed flag)
  130  interrupted (Ctrl-C); files already written are complete, a rerun with
       --fast-compile redoes only what is missing or stale"""

# fp16, then the schemes of hyperdex.tools.quantization.SCHEMES (GPTQ unless named rtn-).
QUANTIZATIONS = ("none", "w4a16", "w8a16", "rtn-w4a16", "rtn-w8a16")

DEFAULTS = {"num_device": 1, "quantization": "none"}


def banner() -> str:
    line = "*" * 70
    return (
        f"{line}\n** hyperdex compiler {__version__}\n"
        f"** Hugging Face checkpoints to LPU programs (Apache-2.0)\n{line}"
    )


def _ask(prompt: str, parse: Callable[[str], Any], default: Any = None) -> Any:
    """Asks until `parse` accepts the answer (ValueError: say why, ask again). With a
    `default`, the prompt shows it in brackets and an empty answer takes it."""
    shown = f"{prompt} [{default}]" if default is not None else prompt
    while True:
        answer = input(f"[Option\t] {shown}: ").strip()
        if not answer and default is not None:
            answer = str(default)
        try:
            return parse(answer)
        except ValueError as e:
            print(f"[Error\t] {e}; please try again")


def parse_model(text: str) -> str:
    if not text:
        raise ValueError("a Hugging Face model id (org/name) or a local folder is required")
    try:
        compiled_dir(text, None)
    except HyperdexError as e:
        raise ValueError(str(e)) from None
    return text


def parse_num_device(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if n < 1 or n & (n - 1):
        raise ValueError("the number of devices must be a power of two (1, 2, 4, 8)")
    return n


def parse_quantization(text: str) -> str:
    text = (text or "none").lower()
    if text not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {text!r}; choose from {', '.join(QUANTIZATIONS)}")
    return text


def parse_yes_no(text: str) -> bool:
    answer = text.lower()
    if answer in ("", "y", "yes"):
        return True
    if answer in ("n", "no"):
        return False
    raise ValueError("answer y or n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hdex-compile",
        description="Compile a Hugging Face causal LM for LPU devices (and the emulator).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prefix", help=f"where compiled models go (default {default_prefix()})")
    p.add_argument(
        "--model",
        help="Hugging Face id (org/name) or a local HF model folder (required; asked for on a "
        "terminal)",
    )
    p.add_argument(
        "--num-device",
        type=int,
        help=f"number of LPU devices, a power of two (default {DEFAULTS['num_device']})",
    )
    p.add_argument(
        "--max-length",
        type=int,
        help="longest sequence, prompt + output (default: min(model limit, 2048))",
    )
    p.add_argument(
        "--quantization",
        help=f"weight format: {', '.join(QUANTIZATIONS)} (default {DEFAULTS['quantization']}: "
        "fp16 weights)",
    )
    q = p.add_argument_group("quantization (GPTQ calibration)")
    q.add_argument(
        "--calibration-text",
        metavar="FILE",
        help="UTF-8 text to calibrate GPTQ on (default: the English text shipped with hyperdex)",
    )
    q.add_argument("--nsamples", type=int, help="calibration samples (default 128)")
    q.add_argument("--seqlen", type=int, help="tokens per calibration sample (default 512)")
    q.add_argument("--quantize-lm-head", action="store_true", help="quantize the LM head too")
    p.add_argument(
        "--export",
        choices=["vcu128"],
        help="also write board-format files: vcu128 = seed 003's VCU128 layout (w4a16 only)",
    )
    p.add_argument(
        "--type-device",
        default="u55c",
        help="device preset name (u55c, vcu128, asic) or a preset JSON file",
    )
    p.add_argument(
        "--fast-compile",
        action="store_true",
        help="redo only phases whose inputs changed (content hashes)",
    )
    p.add_argument(
        "--low-memory-usage",
        action="store_true",
        help="delete the HF weight files after conversion",
    )
    p.add_argument("--token", help="Hugging Face token for private models (or set HF_TOKEN)")
    p.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="do not ask (as without a terminal): take the defaults for missing values and "
        "do not confirm",
    )
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="errors only, no bars")
    p.add_argument("--version", action="version", version=f"hdex-compile {__version__}")
    return p


def _fill_missing(
    args: argparse.Namespace, parser: argparse.ArgumentParser, interactive: bool
) -> None:
    asks = (
        (
            "model",
            "--model",
            "Please enter the HuggingFace model id (or a local folder)",
            parse_model,
        ),
        ("num_device", "--num-device", "Please enter the number of LPU devices", parse_num_device),
        (
            "quantization",
            "--quantization",
            f"Please enter the quantization ({'/'.join(QUANTIZATIONS)})",
            parse_quantization,
        ),
    )
    for attr, flag, prompt, parse in asks:
        value = getattr(args, attr)
        if value is not None:
            try:
                setattr(args, attr, parse(str(value)))
            except ValueError as e:
                parser.error(f"{flag}: {e}")
            continue
        if interactive:
            setattr(args, attr, _ask(prompt, parse, DEFAULTS.get(attr)))
        elif attr in DEFAULTS:
            setattr(args, attr, DEFAULTS[attr])
        else:
            why = "with --yes" if args.yes else "when stdin is not a terminal"
            parser.error(f"{flag} is required {why} (it has no default)")


def _check_dependencies(model: str) -> None:
    """What the base install lacks for this model, checked before any work: a local folder
    with only PyTorch .bin weights needs torch (safetensors weights need nothing more)."""
    folder = Path(model)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("pytorch_model*.bin")):
        require_extra(
            "hdex-compile",
            "torch",
            why=" to read the PyTorch .bin checkpoint in "
            f"{folder} (safetensors checkpoints need nothing more)",
        )


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="[Info\t] %(message)s", stream=sys.stdout, force=True)
    interactive = sys.stdin.isatty() and not args.yes
    if not args.quiet:
        print(banner())
    try:
        _fill_missing(args, parser, interactive)
        _check_dependencies(args.model)
        quantization = _quantization(args)
        variant = resolve_quantization(quantization)
        target = compiled_dir(args.model, args.prefix, variant.variant if variant else None)
        if interactive:
            prompt = f"Compile {args.model} for {args.num_device} device(s) into {target}? [Y/n]"
            if not _ask(prompt, parse_yes_no):
                print("[Info\t] Nothing compiled")
                return 0
        from .compiler import AutoCompiler

        compiler = AutoCompiler()
        path = compiler.compile(
            model_id=args.model,
            num_device=args.num_device,
            max_length=args.max_length,
            low_memory_usage=args.low_memory_usage,
            fast_compile=args.fast_compile,
            token=args.token,
            type_device=args.type_device,
            prefix=args.prefix,
            quantization=quantization,
            progress=not args.quiet,
            export=args.export,
        )
    except KeyboardInterrupt:
        print("\n[Error\t] interrupted; rerun with --fast-compile to finish", file=sys.stderr)
        return 130
    except HyperdexError as e:
        print(f"[Error\t] {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        total = sum(compiler.last_timings.values())
        times = ", ".join(f"{k} {v:.2f} s" for k, v in compiler.last_timings.items())
        print(f"[Info\t] Timings: {times} (total {total:.2f} s)")
        print(f"[Info\t] Compiled model at {path}")
        print("[Info\t] Exit SDK program")
    else:
        print(path)
    return 0


def _quantization(args: argparse.Namespace) -> Any:
    """The scheme name, or a QuantizationConfig when calibration flags refine it."""
    from .quantization import SCHEMES, QuantizationConfig

    if args.quantization in (None, "none"):
        if args.calibration_text or args.nsamples or args.seqlen or args.quantize_lm_head:
            raise ConfigError("the calibration flags need --quantization (e.g. w4a16)")
        return None
    extra: dict[str, Any] = {}
    if args.calibration_text:
        try:
            extra["dataset"] = Path(args.calibration_text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"cannot read --calibration-text {args.calibration_text}: {e}"
            ) from None
    for name in ("nsamples", "seqlen"):
        if getattr(args, name) is not None:
            extra[name] = getattr(args, name)
    if args.quantize_lm_head:
        extra["quantize_lm_head"] = True
    if not extra:
        return args.quantization
    return QuantizationConfig(**SCHEMES[args.quantization], **extra)


if __name__ == "__main__":
    sys.exit(main())
