"""Training data: samples from text or JSONL records (chat here; completion and instruction in
records.py), seeded shuffling, batch rows (packed ones in packing.py).

Spec: original-finetune.md section C. Shapes: N tokens of the data, S samples, B rows (n_batch),
T positions per row (n_ctx).

A batch is ``inputs`` int32 [B, T] and ``targets`` int32 [B, T]: row b is
inputs [BOS, t0 .. t(T-2)], targets [t0 .. t(T-1)], with target -1 where no loss is taken
(chat data: everything but the assistant's tokens and the padding).

The tokenizer is any object with ``tokenize(text, add_bos=False, special=False) -> list[int]``,
``bos_id`` and ``eos_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .chat import ChatTemplateError, assistant_spans

IGNORE = -1  # target of a position without loss


class Tokenizer(Protocol):
    bos_id: int
    eos_id: int

    def tokenize(self, text: str, add_bos: bool = False, special: bool = False) -> list[int]: ...


class DataError(ValueError):
    """Training data that cannot be used; the message names the file and the problem."""


@dataclass
class Samples:
    """Token data cut into samples. Sample i is tokens[begins[i] : begins[i] + sizes[i]]."""
    source: str  # the data file's name, part of the samples hash
    tokens: np.ndarray  # int32 [N]
    begins: np.ndarray  # int64 [S]
    sizes: np.ndarray  # int64 [S], every size >= 1
    trainable: np.ndarray | None = None  # bool [N]: token is a target; None: all are (plain text)
    notes: list[str] = field(default_factory=list)  # things worth telling the user

    @property
    def count(self) -> int:
        return len(self.begins)

    def samples_hash(self) -> int:
        """u64 over the file name, the sample boundaries and the tokens: when it differs from
        the checkpoint's, the data changed and the shuffle starts afresh."""
        h = hashlib.blake2b(digest_size=8)
        h.update(os.path.basename(self.source).encode())
        for arr in (np.int64(self.count), self.begins, self.sizes, self.tokens):
            h.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())
        if self.trainable is not None:
            h.update(np.packbits(self.trainable).tobytes())
        return int.from_bytes(h.digest(), "little")


# ---- reading -------------------------------------------------------------------------------------

def read_text(path: str | os.PathLike, what: str = "training data") -> str:
    """The whole file as UTF-8 text; DataError naming the file when it is missing, empty or not UTF-8."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{name}: cannot read {what}: {e.strerror}") from None
    if not raw:
        raise DataError(f"{name}: {what} is empty")
    try:
        return raw.decode("utf-8-sig")  # a leading byte-order mark is not data
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{name}: {what} is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at "
                        f"byte offset {e.start}, line {line}); ggtune reads {what} as UTF-8 "
                        "(the original read raw bytes): convert the file, e.g. with iconv") from None


def unescape(text: str) -> str:
    """``--escape``: \\n \\r \\t \\' \\" \\\\ and \\xNN (a byte; several may form one UTF-8
    character). Any other backslash sequence is kept as it is, as the original did."""
    simple = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("'"): b"'", ord('"'): b'"',
              ord("\\"): b"\\"}
    src, out, i = text.encode("utf-8"), bytearray(), 0
    while i < len(src):
        if src[i] == ord("\\") and i + 1 < len(src):
            code = src[i + 1]
            if code in simple:
                out += simple[code]
                i += 2
                continue
            hex_digits = src[i + 2: i + 4]
            if code == ord("x") and len(hex_digits) == 2 and all(chr(c) in "0123456789abcdefABCDEF"
                                                                 for c in hex_digits):
                out.append(int(hex_digits, 16))
                i += 4
                continue
        out.append(src[i])
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"--sample-start {text!r}: after --escape the pattern is not valid UTF-8") from None


# ---- plain text ----------------------------------------------------------------------------------

def text_samples(text: str, tokenizer: Tokenizer, *, n_ctx: int, source: str = "<text>",
                 sample_start: str = "", include_sample_start: bool = False,
                 overlapping_samples: bool = False) -> Samples:
    """Samples of plain text (tokenized without BOS, special-token text as plain text).

    No ``sample_start``: sample 0 is tokens [0, min(n_ctx, N)), then one n_ctx-long sample starts
    at every token 1 .. N-n_ctx-1. With a pattern: each occurrence starts a sample that ends at
    the next occurrence (``overlapping_samples``: runs on, at most n_ctx tokens); the pattern
    itself is dropped unless ``include_sample_start``. Empty samples are dropped."""
    if not text:
        raise DataError(f"{source}: training data is empty")
    if not sample_start:
        return _every_token_samples(text, tokenizer, n_ctx, source)
    starts = _find_all(text, sample_start)
    notes = []
    if not starts:
        notes.append(f"sample start pattern {sample_start!r} not found: the whole data is one sample")
        starts = [0]
        skip = 0
    else:
        skip = 0 if include_sample_start else len(sample_start)
    pieces = []
    for i, start in enumerate(starts):
        begin = start + skip
        if overlapping_samples:
            pieces.append(_first_tokens(text, begin, tokenizer, n_ctx))
        else:
            end = starts[i + 1] if i + 1 < len(starts) else len(text)
            pieces.append(tokenizer.tokenize(text[begin:end], add_bos=False, special=False) if end > begin else [])
    pieces = [p for p in pieces if p]
    if not pieces:
        raise DataError(f"{source}: every sample between the --sample-start patterns is empty")
    samples = _concatenate(pieces, source, trainable=None)
    samples.notes.extend(notes)
    return samples


def _every_token_samples(text, tokenizer, n_ctx, source) -> Samples:
    tokens = np.asarray(tokenizer.tokenize(text, add_bos=False, special=False), np.int32)
    n = len(tokens)
    if n < n_ctx:
        raise DataError(f"{source}: training data has {n} tokens, fewer than one context of "
                        f"n_ctx={n_ctx}; add data or lower --ctx")
    further = np.arange(1, max(n - n_ctx, 1), dtype=np.int64)  # starts 1 .. N-n_ctx-1
    begins = np.concatenate([[0], further]).astype(np.int64)
    sizes = np.full(len(begins), n_ctx, np.int64)
    return Samples(source=source, tokens=tokens, begins=begins, sizes=sizes)


def _find_all(text: str, pattern: str) -> list[int]:
    found, at = [], text.find(pattern)
    while at >= 0:
        found.append(at)
        at = text.find(pattern, at + len(pattern))
    return found


def _first_tokens(text: str, begin: int, tokenizer, n_ctx: int) -> list[int]:
    """The first n_ctx tokens of text[begin:], tokenizing a growing window rather than the rest of
    the file; one token of slack keeps the last kept token clear of the window's cut."""
    width = 8 * n_ctx
    while True:
        tokens = tokenizer.tokenize(text[begin: begin + width], add_bos=False, special=False)
        if len(tokens) > n_ctx or begin + width >= len(text):
            return tokens[:n_ctx]
        width *= 2


def _concatenate(pieces: list[list[int]], source: str, trainable: list[np.ndarray] | None) -> Samples:
    sizes = np.array([len(p) for p in pieces], np.int64)
    begins = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    tokens = np.concatenate([np.asarray(p, np.int32) for p in pieces])
    mask = np.concatenate(trainable) if trainable is not None else None
    return Samples(source=source, tokens=tokens, begins=begins, sizes=sizes, trainable=mask)


# ---- chat JSONL ----------------------------------------------------------------------------------

def chat_samples(lines: list[str], tokenizer: Tokenizer, template: str, *, source: str = "<chat>",
                 n_ctx: int | None = None, bos_token: str = "", eos_token: str = "") -> Samples:
    """One sample per JSONL line ``{"messages": [{"role": ..., "content": ...}, ...]}``, rendered
    with the model's chat template; only the assistant's tokens (content and end-of-turn marker)
    are trainable. Each part of the text is tokenized on its own (special tokens recognised), so
    no token straddles a trainable boundary. A leading BOS token is dropped: every batch row
    starts with BOS already."""
    conversations = ((number, _parse_chat_line(line, source, number))
                     for number, line in enumerate(lines, start=1) if line.strip())
    return conversation_samples(conversations, tokenizer, template, source=source, n_ctx=n_ctx,
                                bos_token=bos_token, eos_token=eos_token)


def conversation_samples(conversations, tokenizer: Tokenizer, template: str, *, source: str,
                         n_ctx: int | None = None, bos_token: str = "", eos_token: str = "") -> Samples:
    """chat_samples of already parsed conversations [(line number, messages), ...]."""
    pieces, masks = [], []
    for number, messages in conversations:
        try:
            text, spans = assistant_spans(template, messages, bos_token=bos_token, eos_token=eos_token)
        except ChatTemplateError as e:
            raise DataError(f"{source}:{number}: {e}") from None
        if not spans:
            raise DataError(f"{source}:{number}: the conversation has no assistant message to train on")
        tokens, mask = _tokenize_spans(text, spans, tokenizer)
        if tokens and tokens[0] == tokenizer.bos_id:
            tokens, mask = tokens[1:], mask[1:]
        pieces.append(tokens)
        masks.append(mask)
    if not pieces:
        raise DataError(f"{source}: training data has no conversations")
    return masked_samples(pieces, masks, source, n_ctx, "conversations")


def masked_samples(pieces: list[list[int]], masks: list[np.ndarray], source: str, n_ctx: int | None,
                   what: str) -> Samples:
    """Samples with a trainable mask per token, noting how many are longer than a row."""
    samples = _concatenate(pieces, source, trainable=masks)
    too_long = sum(len(p) > n_ctx for p in pieces) if n_ctx is not None else 0
    if too_long:
        samples.notes.append(f"{too_long} of {len(pieces)} {what} are longer than n_ctx={n_ctx} "
                             "tokens and are cut at the end of the row")
    return samples


def json_record(line: str, source: str, number: int):
    """One JSONL line parsed; DataError naming file and line when it is not JSON."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{source}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise DataError(f"{source}:{number}: JSON nested too deeply to read") from None


def _parse_chat_line(line: str, source: str, number: int) -> list[dict]:
    record = json_record(line, source, number)
    if not isinstance(record, dict) or "messages" not in record:
        raise DataError(f'{source}:{number}: expected an object {{"messages": [...]}}')
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{source}:{number}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f'{source}:{number}: messages[{i}] must be {{"role": str, "content": str}}')
    return messages


def _tokenize_spans(text: str, spans: list[tuple[int, int]], tokenizer) -> tuple[list[int], np.ndarray]:
    tokens, mask, at = [], [], 0
    bounds = []
    for start, end in spans:
        bounds += [(at, start, False), (start, end, True)]
        at = end
    bounds.append((at, len(text), False))
    for start, end, train in bounds:
        if end > start:
            piece = tokenizer.tokenize(text[start:end], add_bos=False, special=True)
            tokens += piece
            mask += [train] * len(piece)
    return tokens, np.array(mask, bool)


def load_training_data(path: str | os.PathLike, tokenizer: Tokenizer, *, n_ctx: int,
                       train_format: str = "text", sample_start: str = "", escape: bool = False,
                       include_sample_start: bool = False, overlapping_samples: bool = False,
                       chat_template: str | None = None, bos_token: str = "",
                       eos_token: str = "") -> Samples:
    """Reads and tokenizes ``path`` (``train_format`` "text", "chat", "completion", "instruction"
    or "auto": records.py); every problem with the data is a DataError naming the file, raised here
    before any training work."""
    from . import records

    name = os.fspath(path)
    text = read_text(name)
    # JSONL lines end at "\n" only: str.splitlines would also cut at U+2028 inside JSON strings
    lines = text.split("\n")
    notes = []
    if train_format == "auto":
        train_format = records.detect_format(name, lines)
        notes.append(f"{name}: training format {train_format!r} (--train-format auto"
                     + (", from the first record)" if train_format != "text" else ", not a .jsonl file)"))
    samples = _samples_of_format(name, text, lines, train_format, tokenizer, n_ctx=n_ctx,
                                 sample_start=sample_start, escape=escape,
                                 include_sample_start=include_sample_start,
                                 overlapping_samples=overlapping_samples, chat_template=chat_template,
                                 bos_token=bos_token, eos_token=eos_token)
    samples.notes[:0] = notes
    return samples


def _samples_of_format(name, text, lines, train_format, tokenizer, *, n_ctx, sample_start, escape,
                       include_sample_start, overlapping_samples, chat_template, bos_token, eos_token):
    from . import records

    if train_format == "text":
        pattern = unescape(sample_start) if escape else sample_start
        return text_samples(text, tokenizer, n_ctx=n_ctx, source=name, sample_start=pattern,
                            include_sample_start=include_sample_start,
                            overlapping_samples=overlapping_samples)
    if train_format == "completion":
        return records.completion_samples(lines, tokenizer, source=name, n_ctx=n_ctx)
    if train_format in ("chat", "instruction"):
        if chat_template is None:
            raise DataError(f"{name}: --train-format {train_format} needs the model's chat template, "
                            "and there is none")
        if train_format == "chat":
            return chat_samples(lines, tokenizer, chat_template, source=name, n_ctx=n_ctx,
                                bos_token=bos_token, eos_token=eos_token)
        return conversation_samples(records.instruction_conversations(lines, name), tokenizer, chat_template,
                                    source=name, n_ctx=n_ctx, bos_token=bos_token, eos_token=eos_token)
    raise DataError(f"train_format: expected one of {', '.join(records.TRAIN_FORMATS)}, got {train_format!r}")


# ---- shuffling -----------------------------------------------------------------------------------

def seed_rng_state(seed: int) -> str:
    """The shuffle RNG state for ``seed``: mt19937 seeded like std::mt19937(seed)."""
    return _encode_state(np.random.RandomState(seed & 0xFFFFFFFF).get_state(legacy=False)["state"])


def _encode_state(state: dict) -> str:
    return "mt19937 " + str(int(state["pos"])) + " " + " ".join(str(int(k)) for k in state["key"])


def _generator(rng_state: str) -> np.random.MT19937:
    words = rng_state.split()
    if len(words) != 626 or words[0] != "mt19937" or not all(w.isdigit() and int(w) < 2**32 for w in words[1:]):
        raise DataError("shuffle rng_state: not a ggtune mt19937 state string")
    bits = np.random.MT19937()
    try:
        bits.state = {"bit_generator": "MT19937",
                      "state": {"key": np.array([int(w) for w in words[2:]], np.uint32), "pos": int(words[1])}}
    except ValueError:  # a position outside the 624-word state
        raise DataError("shuffle rng_state: not a valid mt19937 state") from None
    return bits


@dataclass
class Shuffled:
    order: np.ndarray  # int64 [S]: sample index at each shuffled position
    offsets: np.ndarray  # int64 [S]: random start inside each shuffled sample
    next_rng_state: str  # the state after this shuffle: the next epoch starts from it


def shuffle_samples(rng_state: str, sizes: np.ndarray) -> Shuffled:
    """One permutation, as the original: a 32-bit draw per sample as its sort key (ties by index),
    then one draw per shuffled sample for its offset ``floor((size-1) · r / (2³²-2))``."""
    bits = _generator(rng_state)
    count = len(sizes)
    keys = bits.random_raw(count).astype(np.uint64)
    order = np.argsort(keys, kind="stable").astype(np.int64)
    draws = bits.random_raw(count).astype(np.float64)
    offsets = ((sizes[order] - 1) * (draws / float(2**32 - 2))).astype(np.int64)
    return Shuffled(order=order, offsets=offsets, next_rng_state=_encode_state(bits.state["state"]))


@dataclass
class ShuffleState:
    """What a checkpoint keeps of the shuffle: the RNG state that produced the current permutation,
    the samples hash and count it was made for, and the next shuffled position to use."""
    rng_state: str
    samples_hash: int
    sample_count: int
    next_sample: int


# ---- batches -------------------------------------------------------------------------------------

@dataclass
class BatchOptions:
    n_ctx: int
    n_batch: int
    separate_with_eos: bool = False
    separate_with_bos: bool = True
    start_with_bos: bool = True  # False: a row's first input is its sample's first token
    fill_with_next_samples: bool = False
    sample_random_offsets: bool = False
    pack: bool = False  # ggtune: whole samples packed per row, attention kept inside each (packing.py)


def make_batch(samples: Samples, shuffled: Shuffled, first: int, opts: BatchOptions, bos_id: int,
               eos_id: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows from the shuffled samples starting at shuffled position ``first`` (wrapping around).
    Returns inputs int32 [B, T], targets int32 [B, T] and the number of samples used.

    Each row starts with BOS (or, without ``start_with_bos``, with the sample's first token as input
    only) and takes the next sample; when it runs out the row continues with EOS (input and target),
    or with ``fill_with_next_samples`` with EOS (if separate_with_eos), BOS (if separate_with_bos)
    and the next sample. Plain-text separators and padding are targets, as in the original; with
    chat data only trainable tokens are."""
    n_ctx, count = opts.n_ctx, samples.count
    pad_is_target = samples.trainable is None
    inputs = np.empty((opts.n_batch, n_ctx), np.int32)  # [B, T]
    targets = np.empty((opts.n_batch, n_ctx), np.int32)  # [B, T]
    used = 0

    def take(position):
        idx = shuffled.order[(first + position) % count]
        offset = shuffled.offsets[(first + position) % count] if opts.sample_random_offsets else 0
        return samples.begins[idx] + offset, samples.begins[idx] + samples.sizes[idx]

    for row in range(opts.n_batch):
        at, end = take(used)
        used += 1
        eos_pending, bos_pending = opts.separate_with_eos, opts.separate_with_bos
        inputs[row, 0] = bos_id
        if not opts.start_with_bos and at < end:
            inputs[row, 0] = samples.tokens[at]
            at += 1
        for i in range(n_ctx):
            token, target = eos_id, eos_id if pad_is_target else IGNORE
            if at >= end and opts.fill_with_next_samples:
                if eos_pending:
                    eos_pending = False
                elif bos_pending:
                    bos_pending = False
                    token, target = bos_id, bos_id if pad_is_target else IGNORE
                else:
                    at, end = take(used)
                    used += 1
                    eos_pending, bos_pending = opts.separate_with_eos, opts.separate_with_bos
            if at < end:
                token = int(samples.tokens[at])
                target = token if pad_is_target or samples.trainable[at] else IGNORE
                at += 1
            targets[row, i] = target
            if i + 1 < n_ctx:
                inputs[row, i + 1] = token
    return inputs, targets, used


@dataclass
class Batch:
    inputs: np.ndarray  # int32 [B, T]
    targets: np.ndarray  # int32 [B, T], -1 = no loss
    used_samples: int  # samples consumed (the checkpoint's training.sample_count grows by it)
    epoch_completed: bool = False  # this batch finished an epoch; the next one starts a new permutation
    positions: np.ndarray | None = None  # int32 [B, T] packed rows: position inside each sample
    first_key: np.ndarray | None = None  # int32 [B, T] packed rows: row index where the sample starts


def build_batch(samples: Samples, shuffled: Shuffled, first: int, opts: BatchOptions, bos_id: int,
                eos_id: int, wrap: bool = True) -> Batch:
    """The batch at shuffled position ``first``: packed rows (``opts.pack``) or make_batch's."""
    if opts.pack:
        from .packing import packed_rows

        inputs, targets, positions, first_key, used = packed_rows(
            samples, shuffled, first, opts.n_ctx, opts.n_batch, bos_id, eos_id, wrap=wrap,
            start_with_bos=opts.start_with_bos)
        return Batch(inputs, targets, used, positions=positions, first_key=first_key)
    inputs, targets, used = make_batch(samples, shuffled, first, opts, bos_id, eos_id)
    return Batch(inputs, targets, used)


def attention_layout(batch: Batch, rows: slice = slice(None)) -> dict:
    """The graph's keyword arguments for the positions and attention bounds of a packed batch's
    ``rows`` (none unpacked)."""
    if batch.positions is None:
        return {}
    return {"positions": batch.positions[rows], "first_key": batch.first_key[rows]}


class BatchStream:
    """Batches in shuffled order over epochs, resumable from a ShuffleState.

    The stored state is reused when it exists, was made for the same samples (hash and count) and
    ``force_reshuffle`` is off; otherwise the shuffle starts afresh from ``seed``."""

    def __init__(self, samples: Samples, opts: BatchOptions, *, bos_id: int, eos_id: int, seed: int,
                 state: ShuffleState | None = None, force_reshuffle: bool = False):
        self.samples, self.opts, self.bos_id, self.eos_id = samples, opts, bos_id, eos_id
        samples_hash = samples.samples_hash()
        self.reshuffled = (state is None or not state.rng_state or force_reshuffle
                           or state.samples_hash != samples_hash or state.sample_count != samples.count)
        if self.reshuffled:
            state = ShuffleState(rng_state=seed_rng_state(seed), samples_hash=samples_hash,
                                 sample_count=samples.count, next_sample=0)
        self._state = ShuffleState(**vars(state))
        self._shuffled = shuffle_samples(self._state.rng_state, samples.sizes)

    @property
    def state(self) -> ShuffleState:
        return ShuffleState(**vars(self._state))

    def next_batch(self) -> Batch:
        batch = build_batch(self.samples, self._shuffled, self._state.next_sample, self.opts,
                            self.bos_id, self.eos_id)
        self._state.next_sample += batch.used_samples
        epoch_completed = self._state.next_sample >= self._state.sample_count
        if epoch_completed:
            # like the original, the samples of an epoch's last batch may wrap into its start
            self._state.rng_state = self._shuffled.next_rng_state
            self._state.next_sample = 0
            self._shuffled = shuffle_samples(self._state.rng_state, self.samples.sizes)
        batch.epoch_completed = epoch_completed
        return batch
