"""The `ggtune` command. Each subcommand lives in its own module, which exposes
`add_cli(subparsers)` registering its parser with `set_defaults(func=run)`; add new ones to
SUBCOMMAND_MODULES.

User errors (missing files, unreadable models, bad arguments) print one line on stderr with no
traceback: exit code 2 for a missing file or a bad argument, 1 for anything else that failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

SUBCOMMAND_MODULES = [
    "ggtune.demo",      # demo
    "ggtune.trainer",   # finetune
    "ggtune.evaluate",  # perplexity
    "ggtune.generate",  # generate
    "ggtune.convert",   # convert-checkpoint
    "ggtune.peft",      # export-peft
    "ggtune.merge",     # merge
    "ggtune.plot",      # plot
]


class CliError(Exception):
    """A user error: one line on stderr and exit code `code`."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def require_file(path: str, option: str) -> None:
    if not os.path.isfile(path):
        raise CliError(f"{option}: no such file: {path}")


def load_model_from_args(args):
    """load_model from --model, --lora/--lora-scale (paired in order, default scale 1) and --threads."""
    from .model import load_model

    require_file(args.model, "--model")
    for path in args.lora:
        require_file(path, "--lora")
    if len(args.lora_scale) > len(args.lora):
        raise CliError(f"--lora-scale given {len(args.lora_scale)} times for {len(args.lora)} --lora")
    scales = list(args.lora_scale) + [1.0] * (len(args.lora) - len(args.lora_scale))
    return load_model(args.model, n_threads=args.threads, lora=list(zip(args.lora, scales)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ggtune", description="LoRA finetuning of GGUF models (llama, qwen2, qwen3, gemma3) on the CPU")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .adapters import AdapterError
    from .chat import ChatTemplateError
    from .gguf_io import GGUFError

    from .options import normalize_flags

    args = build_parser().parse_args(normalize_flags(list(sys.argv[1:] if argv is None else argv)))
    try:
        return args.func(args)
    except CliError as e:
        print(f"ggtune {args.command}: error: {e}", file=sys.stderr)
        return e.code
    except (GGUFError, AdapterError, ChatTemplateError, ValueError, OSError) as e:
        print(f"ggtune {args.command}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"ggtune {args.command}: error: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nggtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m ggtune.cli: run the package's module, not this __main__ copy
    from ggtune.cli import main as package_main

    sys.exit(package_main())
