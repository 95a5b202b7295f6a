"""JSONL training records beside chat: prompt/completion and instruction, and format detection.

- completion  ``{"prompt": str, "completion": str}``: the prompt then the completion and EOS, as
  plain text (special-token text is not parsed); the loss is on the completion and EOS only. Prompt
  and completion are tokenized on their own, so no token straddles the boundary.
- instruction ``{"instruction": str, "input": str (optional), "output": str}`` (Alpaca's layout):
  the conversation [user: instruction, a blank line and input; assistant: output], rendered through
  the model's chat template like chat data, so the loss is on the output (and its end-of-turn) only.

``--train-format auto`` (the default) reads a ``.jsonl`` file's first record and picks chat
(``messages``), completion or instruction from its keys; any other file is plain text.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from .data import DataError, Tokenizer, json_record, masked_samples

TRAIN_FORMATS = ("auto", "text", "chat", "completion", "instruction")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
KEYS = {"chat": ("messages",), "completion": ("prompt", "completion"), "instruction": ("instruction", "output")}


def detect_format(source: str, lines: list[str]) -> str:
    """The format of a data file: text unless it is .jsonl, then the first record's kind."""
    if not os.fspath(source).lower().endswith(JSONL_SUFFIXES):
        return "text"
    for number, line in _records(lines):
        record = json_record(line, source, number)
        if isinstance(record, dict):
            for fmt, keys in KEYS.items():
                if all(k in record for k in keys):
                    return fmt
        found = ", ".join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
        raise DataError(f'{source}:{number}: cannot tell the JSONL format: expected {{"messages"}}, '
                        f'{{"prompt", "completion"}} or {{"instruction", "input", "output"}}, found {found}; '
                        "or pass --train-format text")
    raise DataError(f"{source}: training data has no records")


def _records(lines: list[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line


def _fields(line: str, source: str, number: int, required: tuple[str, ...], optional: tuple[str, ...] = ()):
    """The record's string fields; DataError naming file, line and the field when one is missing
    or not a string."""
    record = json_record(line, source, number)
    layout = ", ".join(f'"{k}": str' for k in required + optional)
    if not isinstance(record, dict):
        raise DataError(f"{source}:{number}: expected an object {{{layout}}}")
    values = []
    for key in required + optional:
        value = record.get(key, "" if key in optional else None)
        if not isinstance(value, str):
            problem = "is missing" if value is None else f"must be a string, not {type(value).__name__}"
            raise DataError(f"{source}:{number}: {key!r} {problem} (records are {{{layout}}})")
        values.append(value)
    return values


def completion_samples(lines: list[str], tokenizer: Tokenizer, *, source: str = "<completion>",
                       n_ctx: int | None = None):
    """One sample per record: prompt tokens (no loss), completion tokens and EOS (loss)."""
    pieces, masks = [], []
    for number, line in _records(lines):
        prompt, completion = _fields(line, source, number, ("prompt", "completion"))
        if not completion:
            raise DataError(f"{source}:{number}: the completion is empty, nothing to train on")
        head = tokenizer.tokenize(prompt, add_bos=False, special=False)
        tail = tokenizer.tokenize(completion, add_bos=False, special=False) + [tokenizer.eos_id]
        pieces.append(head + tail)
        masks.append(np.array([False] * len(head) + [True] * len(tail), bool))
    if not pieces:
        raise DataError(f"{source}: training data has no records")
    return masked_samples(pieces, masks, source, n_ctx, "records")


def instruction_conversations(lines: list[str], source: str) -> Iterator[tuple[int, list[dict]]]:
    """(line number, messages) of each instruction record, for data.conversation_samples."""
    for number, line in _records(lines):
        instruction, output, extra = _fields(line, source, number, ("instruction", "output"), ("input",))
        if not output:
            raise DataError(f"{source}:{number}: the output is empty, nothing to train on")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        yield number, [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
