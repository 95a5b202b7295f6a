"""The finetune options: one table serves ``ggtune.finetune(**options)`` and ``ggtune finetune``.

Names and defaults are the original's (spec section A); entries marked ggtune are additions.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_BUDGET_MIB = 750  # memory.py's default: SmolLM2's default run keeps all 30 layers within issue 12's 800 MB


def _opt(default, help: str, *aliases: str, negation: str | None = None, flag: str | None = None):
    """A dataclass field carrying its command-line spelling."""
    return field(default=default, metadata={"help": help, "aliases": aliases, "negation": negation,
                                            "flag": flag})


@dataclass
class FinetuneOptions:
    model_base: str = _opt("", "base model GGUF (llama, qwen2, qwen3 or gemma3)")
    train_data: str = _opt("shakespeare.txt", "training data: raw text, or JSONL (see --train-format)")
    train_format: str = _opt("auto", "ggtune: 'text' (the original's), 'chat' (JSONL {\"messages\"}, loss on "
                                     "assistant tokens), 'completion' (JSONL {\"prompt\", \"completion\"}, loss "
                                     "on the completion), 'instruction' (JSONL {\"instruction\", \"input\", "
                                     "\"output\"} through the chat template, loss on the output) or 'auto' "
                                     "(text, or for .jsonl the first record's format)")
    val_data: str = _opt("", "ggtune: held-out data in the training format, scored every --eval-every")
    val_split: float = _opt(0.0, "ggtune: hold out this fraction of the training samples (seeded) as "
                                 "validation data instead of --val-data")
    eval_every: int = _opt(0, "ggtune: validation loss and perplexity every N iterations (0: only at "
                              "the end, when there is validation data)")
    early_stop: int = _opt(0, "ggtune: stop after K evaluations without a better validation loss (0: off); "
                              "the best adapter is kept as the --lora-out name with BEST for ITERATION")
    metrics: str | None = _opt(None, "ggtune: metrics log, one JSON line per iteration (default: "
                                     "<adapter name>.metrics.jsonl beside --lora-out; '' disables; a "
                                     "resumed run appends)")
    pack: bool = _opt(False, "ggtune: pack whole samples into each row, positions restarting and "
                             "attention kept inside each sample (short chat data: far less padding)")
    checkpoint_in: str = _opt("checkpoint.gguf", "resume from this checkpoint if it exists; '' starts fresh")
    checkpoint_out: str = _opt("checkpoint-ITERATION.gguf", "checkpoint output; '' disables checkpoints")
    lora_out: str = _opt("ggml-lora-ITERATION-f32.gguf", "adapter output")
    lora_format: str = _opt("gguf", "ggtune: 'gguf' (current llama.cpp's LoRA adapter) or 'ggla' (the "
                                    "original's format)")
    only_write_lora: bool = _opt(False, "write the adapter from --checkpoint-in and exit")
    pattern_fn_it: str = _opt("ITERATION", "placeholder for the iteration number in output names")
    fn_latest: str = _opt("LATEST", "text for the latest copy in output names")
    save_every: int = _opt(10, "save every N iterations (<= 0: only at the end)")
    seed: int = _opt(-1, "RNG seed for LoRA init and shuffling (-1: time-based)", "-s")
    ctx: int = _opt(128, "tokens per training sequence", "-c")
    threads: int = _opt(0, "kernel threads (0: every core)", "-t")
    batch: int = _opt(8, "sequences per evaluation", "-b")
    grad_acc: int = _opt(1, "batches accumulated per optimizer step")
    sample_start: str = _opt("", "split the data into samples at this string")
    include_sample_start: bool = _opt(False, "keep the sample-start pattern inside each sample")
    escape: bool = _opt(False, "unescape \\n \\r \\t \\' \\\" \\\\ \\xNN in --sample-start")
    overlapping_samples: bool = _opt(False, "a sample may run past the next sample start")
    fill_with_next_samples: bool = _opt(False, "pack following samples into unused positions")
    separate_with_eos: bool = _opt(False, "EOS between packed samples", negation="--no-separate-with-eos")
    separate_with_bos: bool = _opt(True, "BOS between packed samples", negation="--no-separate-with-bos")
    start_with_bos: bool = _opt(True, "ggtune: every row starts with BOS, as the original; without it a row "
                                      "starts with its sample's first token (train as text is scored "
                                      "without BOS)", negation="--no-start-with-bos")
    sample_random_offsets: bool = _opt(False, "start each row at a random offset inside its sample")
    force_reshuffle: bool = _opt(False, "ignore the shuffle state stored in the checkpoint")
    use_flash: bool = _opt(True, "fused attention (ggtune's attention is always fused; accepted for "
                                 "compatibility)", negation="--no-flash")
    use_checkpointing: bool = _opt(True, "gradient checkpointing (recompute each layer in the backward)",
                                   negation="--no-checkpointing")
    keep_layers: int | None = _opt(None, "ggtune: with checkpointing, keep the last N layers' activations "
                                         "instead of recomputing them (faster; each costs one layer's "
                                         "activations, shown in the memory plan); default: as many as "
                                         "--memory-budget has room for")
    memory_budget: float | None = _opt(None, "ggtune: MiB the memory plan (expected peak RSS) may reach; "
                                             "without --keep-layers as many layers keep their activations "
                                             f"as fit in it (default {DEFAULT_BUDGET_MIB}, a target only); "
                                             "given, a plan above it is refused before training")
    warmup: int = _opt(100, "learning-rate warmup iterations")
    cos_decay_steps: int = _opt(1000, "cosine decay length")
    cos_decay_restart: float = _opt(1.1, "cycle-length multiplier after each restart")
    cos_decay_min: float = _opt(0.1, "cosine floor")
    enable_restart: bool = _opt(False, "cosine decay with restarts", negation="--disable-restart")
    opt_past: int = _opt(0, "window of the delta convergence test (0: off)")
    opt_delta: float = _opt(1e-5, "relative loss change of the delta convergence test")
    opt_max_no_improvement: int = _opt(0, "stop after N steps without improvement (0: off)")
    epochs: int = _opt(-1, "stop after N epochs in this run (-1: no limit)")
    adam_iter: int = _opt(256, "optimizer iterations in this run")
    adam_alpha: float = _opt(1e-3, "peak learning rate")
    adam_min_alpha: float = _opt(0.0, "learning-rate floor")
    adam_decay: float = _opt(0.1, "AdamW decoupled weight decay")
    adam_decay_min_ndim: int = _opt(2, "decay only tensors with at least this many dimensions")
    adam_beta1: float = _opt(0.9, "Adam beta1")
    adam_beta2: float = _opt(0.999, "Adam beta2")
    adam_gclip: float = _opt(1.0, "global-norm gradient clip (0: off)")
    adam_epsf: float = _opt(0.0, "stop on a small relative loss change (<= 0: off)")
    norm_rms_eps: float | None = _opt(None, "override the model's rms_norm epsilon")
    rope_freq_base: float | None = _opt(None, "override the model's rope frequency base")
    rope_freq_scale: float | None = _opt(None, "override the model's rope frequency scale")
    lora_r: int = _opt(4, "default LoRA rank")
    lora_alpha: float | None = _opt(None, "LoRA alpha (scale alpha/r); default = lora_r")
    rslora: bool = _opt(False, "ggtune: rank-stabilized LoRA, scale alpha/sqrt(r) (the adapter stores "
                               "alpha*sqrt(r) so llama.cpp's alpha/r applies the same scale)")
    lora_dropout: float = _opt(0.0, "ggtune: dropout probability on every adapter's input, training only "
                                    "(seeded; a resume draws the same masks)")
    lora_targets: str = _opt("", "ggtune: adapt only these tensor kinds at --lora-r, e.g. 'attn_q,attn_v', "
                                 "'all-linear' (every layer matrix), 'attn', 'ffn' or PEFT names (q_proj); "
                                 "--rank-* flags still override")
    rank_att_norm: int | None = _opt(None, "rank of attention-norm adapters (default 1)")
    rank_ffn_norm: int | None = _opt(None, "rank of feed-forward-norm adapters (default 1)")
    rank_out_norm: int | None = _opt(None, "rank of the output-norm adapter (default 1)")
    rank_tok_embd: int | None = _opt(None, "rank of the token-embedding adapter (default lora_r)")
    rank_out: int | None = _opt(None, "rank of the output adapter (default lora_r)")
    rank_wq: int | None = _opt(None, "rank of attn_q adapters (default lora_r)")
    rank_wk: int | None = _opt(None, "rank of attn_k adapters (default lora_r)")
    rank_wv: int | None = _opt(None, "rank of attn_v adapters (default lora_r)")
    rank_wo: int | None = _opt(None, "rank of attn_output adapters (default lora_r)")
    rank_w1: int | None = _opt(None, "rank of ffn_gate adapters (default lora_r)")
    rank_w2: int | None = _opt(None, "rank of ffn_down adapters (default lora_r)")
    rank_w3: int | None = _opt(None, "rank of ffn_up adapters (default lora_r)")
    n_gpu_layers: int = _opt(0, "accepted for compatibility; ggtune runs on the CPU", "-ngl",
                             flag="--gpu-layers")
    precision: str = _opt("auto", "ggtune: matmul precision 'auto' (int8 for quantized weights where the "
                                  "CPU has AVX512-VNNI, else f32), 'f32', 'bf16' or 'int8'")
    profile: bool = _opt(False, "ggtune: print the time share of each phase and kernel per iteration")
    mpi_timeout: float = _opt(300.0, "ggtune: under mpirun, seconds a rank waits for the others at an exchange "
                                     "before stopping the job, naming the ranks that never came")
    verbose: bool = _opt(True, "progress bar and messages on stderr", negation="--quiet")

    def check(self) -> None:
        """Raises ValueError naming the option for values that cannot work."""
        check_ranges(self, FINETUNE_RANGES)
        choices = {"train_format": ("auto", "text", "chat", "completion", "instruction"),
                   "lora_format": ("gguf", "ggla"),
                   "precision": ("auto", "f32", "bf16", "int8")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{_dash(name)}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        from .validation import check_watch_options

        check_watch_options(self)
        if not self.model_base:
            raise ValueError("--model-base: a base model GGUF is required")
        if not os.path.exists(self.model_base):
            raise ValueError(f"--model-base: {self.model_base}: no such file")


# ---- the range of every numeric option ------------------------------------------------------------
# One table per command: an option missing here takes any value of its type. NaN and infinity are
# refused everywhere (a NaN learning rate trains an all-NaN adapter without a word).

MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS


@dataclass(frozen=True)
class Range:
    """Allowed values low <= v <= high (an end excluded when open), plus ``special`` values
    outside it that carry a meaning of their own (e.g. -1 = no limit)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: tuple = ()
    integer: bool = False

    def allows(self, value) -> bool:
        if value in self.special:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            text = kind if self.integer else "a finite number"
        return text + "".join(f" or {_num(v)}" for v in self.special)


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


POSITIVE_INT = Range(low=1, integer=True)
COUNT = Range(low=0, integer=True)  # 0 allowed
ANY_INT = Range(integer=True)
FINITE = Range()
NON_NEGATIVE = Range(low=0)
POSITIVE = Range(low=0, low_open=True)
UNIT = Range(low=0, high=1)
BETA = Range(low=0, high=1, high_open=True)
THREADS = Range(low=0, high=MAX_THREADS, integer=True)  # 0: every core

FINETUNE_RANGES: dict[str, Range] = {
    "ctx": POSITIVE_INT, "batch": POSITIVE_INT, "grad_acc": POSITIVE_INT, "lora_r": POSITIVE_INT,
    "threads": THREADS, "keep_layers": COUNT, "adam_iter": COUNT, "save_every": ANY_INT, "seed": ANY_INT,
    "warmup": COUNT, "cos_decay_steps": POSITIVE_INT, "cos_decay_restart": POSITIVE, "cos_decay_min": UNIT,
    "opt_past": COUNT, "opt_delta": NON_NEGATIVE, "opt_max_no_improvement": COUNT,
    "epochs": Range(low=-1, integer=True),  # <= 0: no limit, as the original
    "adam_alpha": NON_NEGATIVE, "adam_min_alpha": NON_NEGATIVE, "adam_decay": NON_NEGATIVE,
    "adam_decay_min_ndim": COUNT, "adam_beta1": BETA, "adam_beta2": BETA, "adam_gclip": NON_NEGATIVE,
    "adam_epsf": FINITE, "norm_rms_eps": POSITIVE, "rope_freq_base": POSITIVE, "rope_freq_scale": POSITIVE,
    "lora_alpha": POSITIVE, "n_gpu_layers": ANY_INT, "memory_budget": POSITIVE,
    **{name: COUNT for name in ("rank_att_norm", "rank_ffn_norm", "rank_out_norm", "rank_tok_embd", "rank_out",
                                "rank_wq", "rank_wk", "rank_wv", "rank_wo", "rank_w1", "rank_w2", "rank_w3")},
}
# generate (llama.cpp's meanings: --n-predict -1 runs until end of text or context, --top-k 0 and
# --top-p 1 switch the filter off, --temp <= 0 is greedy), perplexity and merge.
GENERATE_RANGES: dict[str, Range] = {
    "n_predict": Range(low=0, integer=True, special=(-1,)), "temp": FINITE, "top_k": COUNT, "top_p": UNIT,
    "seed": ANY_INT, "threads": THREADS, "lora_scale": FINITE,
}
PERPLEXITY_RANGES: dict[str, Range] = {"ctx": Range(low=2, integer=True), "threads": THREADS, "lora_scale": FINITE}
MERGE_RANGES: dict[str, Range] = {"lora_scale": FINITE, "lora_alpha": POSITIVE}


def check_ranges(values: Any, table: dict[str, Range]) -> None:
    """Raises ValueError naming the option for a value outside its Range (or of the wrong type,
    or NaN/infinite). ``values``: an object with the options as attributes (None = not given;
    a list = a repeatable option, each element checked)."""
    for name, allowed in table.items():
        value = getattr(values, name, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None:
                continue
            if not _right_type(item, allowed.integer) or not allowed.allows(item):
                raise ValueError(f"--{_dash(name)}: expected {allowed.describe()}, got {item!r}")


def _right_type(value, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


def _dash(name: str) -> str:
    return name.replace("_", "-")


def options_from_kwargs(**kwargs) -> FinetuneOptions:
    """FinetuneOptions from snake_case (or dashed) keyword arguments; unknown names are refused
    with the closest known option."""
    known = {f.name for f in fields(FinetuneOptions)}
    values = {}
    for key, value in kwargs.items():
        name = key.replace("-", "_")
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            raise TypeError(f"finetune(): unknown option {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        values[name] = value
    return FinetuneOptions(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Registers every option as a --flag with the original's spelling and default."""
    for f in fields(FinetuneOptions):
        meta, flag = f.metadata, f.metadata["flag"] or "--" + _dash(f.name)
        names = [flag, *meta["aliases"]]
        if flag != "--" + _dash(f.name):
            names.append("--" + _dash(f.name))
        shown = "" if f.default is None else f" (default: {f.default!r})"
        if f.type in ("bool", bool):
            parser.add_argument(*names, dest=f.name, action="store_true", default=f.default,
                                help=meta["help"] + shown)
            if meta["negation"]:
                parser.add_argument(meta["negation"], dest=f.name, action="store_false",
                                    help=f"turn {flag} off")
            continue
        parser.add_argument(*names, dest=f.name, type=_parser_type(f.type), default=f.default,
                            metavar=f.name.upper(), help=meta["help"] + shown)


def _parser_type(annotation: str):
    return {"int": int, "float": float, "str": str, "int | None": int, "float | None": float,
            "str | None": str}[annotation]


def normalize_flags(argv: list[str]) -> list[str]:
    """The original turned '_' into '-' in every --flag before matching; so do we."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out
