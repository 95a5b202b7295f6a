"""Text <-> token ids from GGUF metadata alone, reproducing llama.cpp (src/llama-vocab.cpp).

Two vocabulary kinds, chosen by ``tokenizer.ggml.model``:

* ``llama``: SentencePiece style. Spaces become U+2581 "▁"; a space is prefixed to each text
  fragment that starts the text or follows a special token (``add_space_prefix``); adjacent
  symbols are merged greedily while their concatenation is a token, highest token score first
  (ties: leftmost); a symbol that is not a token is emitted as its UTF-8 bytes through the
  ``<0xNN>`` byte tokens.
* ``gpt2``: byte-level BPE. The text is cut into words by the pre-tokenizer regexes named by
  ``tokenizer.ggml.pre``; each word's UTF-8 bytes are mapped to printable characters (GPT-2's
  bytes_to_unicode) and adjacent symbols are merged by merge rank, lowest first (ties: leftmost).

Before either, special tokens are cut out of the text as whole fragments (llama.cpp's
tokenizer_st_partition): user-defined tokens always, control and unknown tokens only when
``special=True``.
"""

from __future__ import annotations

import functools
import heapq
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import regex

# GGUF tokenizer.ggml.token_type values.
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6

# llama.cpp's token attribute bits (llama_token_attr). A token keeps the bits of its GGUF type,
# and gains CONTROL when its text names an end-of-generation or fill-in-the-middle token.
_UNKNOWN = 1 << 0
_UNUSED = 1 << 1
_NORMAL = 1 << 2
_CONTROL = 1 << 3
_USER_DEFINED = 1 << 4
_BYTE = 1 << 5
_ATTR_OF_TYPE = {
    TOKEN_TYPE_NORMAL: _NORMAL,
    TOKEN_TYPE_UNKNOWN: _UNKNOWN,
    TOKEN_TYPE_CONTROL: _CONTROL,
    TOKEN_TYPE_USER_DEFINED: _USER_DEFINED,
    TOKEN_TYPE_UNUSED: _UNUSED,
    TOKEN_TYPE_BYTE: _BYTE,
}  # any other type (0 = undefined) has no bits: it is never rendered

SUPPORTED_MODELS = ("llama", "gpt2")

_SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space


@dataclass(frozen=True)
class _PreTokenizer:
    """A llama.cpp pre-tokenizer: regexes applied in turn (each one splits the pieces the previous
    ones left, keeping unmatched text as pieces too), and the vocabulary flags its name implies."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is emitted whole
    add_bos: bool = False  # default for tokenizer.ggml.add_bos_token
    clean_spaces: bool = True  # detokenize removes the space before ?!., and some contractions


_GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_WORDS = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_WORDS = _LLAMA3_WORDS.replace(r"\p{N}{1,3}", r"\p{N}")

_DEFAULT = _PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_WORDS, r"\p{N}+", "[0-9][0-9][0-9]"))
_LLAMA3 = _PreTokenizer((_LLAMA3_WORDS,), ignore_merges=True, add_bos=True)
_GPT2 = _PreTokenizer((_GPT2_WORDS,))
_DIGITS_THEN_GPT2 = _PreTokenizer((r"\p{N}", _GPT2_WORDS))

# tokenizer.ggml.pre name -> pre-tokenizer, as llama.cpp's llama_vocab::impl::load maps them.
PRE_TOKENIZERS: dict[str, _PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"),
        _LLAMA3,
    ),
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "a.x-4.0", "mellum"), _GPT2),
    **dict.fromkeys(("mpt", "olmo", "jais", "exaone4"), _GPT2),
    **dict.fromkeys(("starcoder", "refact", "codeshell", "exaone", "minerva-7b"), _DIGITS_THEN_GPT2),
    **dict.fromkeys(("smollm", "command-r"), _PreTokenizer(_DIGITS_THEN_GPT2.regexes, clean_spaces=False)),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _PreTokenizer((_QWEN2_WORDS,), clean_spaces=False)),
    **dict.fromkeys(("stablelm2", "megrez"), _PreTokenizer((_QWEN2_WORDS,))),
    **dict.fromkeys(("dbrx", "smaug-bpe"), _PreTokenizer((_LLAMA3_WORDS,))),
    "falcon": _PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_WORDS, "[0-9][0-9][0-9]")),
}

# Token texts llama.cpp recognises when the metadata does not name the token (first match wins;
# llama.cpp scans a hash map, so with several candidates we take the lowest id).
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)  # fmt: skip
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}  # fmt: skip
# Every token with one of these texts ends generation (and is made a control token).
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))  # fmt: skip


def _byte_level_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: byte b -> the printable character standing for it in BPE tokens.
    Printable bytes stand for themselves; the other 68 take U+0100, U+0101, ... in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = [""] * 256
    for b in printable:
        alphabet[b] = chr(b)
    others = (b for b in range(256) if not alphabet[b])
    for n, b in enumerate(others):
        alphabet[b] = chr(0x100 + n)
    return alphabet


_BYTE_CHARS = _byte_level_alphabet()
_LATIN1_TO_BYTE_CHARS = {b: c for b, c in enumerate(_BYTE_CHARS)}  # str.translate table
_BYTE_OF_CHAR = {c: b for b, c in enumerate(_BYTE_CHARS)}


def _byte_level(text: str) -> str:
    """The byte-level BPE spelling of ``text``: one alphabet character per UTF-8 byte."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)


def _decode_byte_level(token_text: str) -> bytes:
    """Bytes of a byte-level BPE token; a character outside the alphabet is rendered the way
    llama.cpp's llama_decode_text does: "[UNK_BYTE_0x<its utf-8 hex><token text>]"."""
    out = bytearray()
    for char in token_text:
        byte = _BYTE_OF_CHAR.get(char)
        if byte is not None:
            out.append(byte)
        else:
            out += b"[UNK_BYTE_0x" + char.encode("utf-8").hex().encode() + token_text.encode("utf-8") + b"]"
    return bytes(out)


# ----------------------------------------------------------------------------------------------
# metadata reading


_MISSING = object()


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, (float, np.floating))


def _scalar(meta: Mapping[str, Any], key: str, kind: str, default: Any = _MISSING) -> Any:
    """meta[key] checked to be a str, int or bool (``kind``); ``default`` when absent, or a
    ValueError naming the key when it is required."""
    value = meta.get(key, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise ValueError(f"tokenizer metadata: required key '{key}' is missing")
        return default
    checks = {"str": lambda v: isinstance(v, str), "int": _is_int, "bool": lambda v: isinstance(v, (bool, np.bool_))}
    if not checks[kind](value):
        raise ValueError(f"tokenizer metadata: '{key}' must be a {kind}, got {type(value).__name__} {value!r:.60}")
    return value.item() if isinstance(value, np.generic) else value


def _array(meta: Mapping[str, Any], key: str, kind: str, min_len: int = 0, required: bool = False) -> list | None:
    """meta[key] checked to be a sequence of at least ``min_len`` items of ``kind``
    ("str", "int" or "number"); None when absent and not required."""
    value = meta.get(key, _MISSING)
    if value is _MISSING:
        if required:
            raise ValueError(f"tokenizer metadata: required key '{key}' is missing")
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"tokenizer metadata: '{key}' must be an array of {kind}, got {type(value).__name__}")
    items = value.tolist() if isinstance(value, np.ndarray) else list(value)
    if len(items) < min_len:
        raise ValueError(f"tokenizer metadata: '{key}' has {len(items)} entries, expected at least {min_len}")
    check = {"str": lambda v: isinstance(v, str), "int": _is_int, "number": _is_number}[kind]
    bad = next((i for i, item in enumerate(items) if not check(item)), None)
    if bad is not None:
        raise ValueError(f"tokenizer metadata: '{key}'[{bad}] must be a {kind}, got {items[bad]!r:.60}")
    return items


def pre_tokenize(text: str, pre: str) -> list[str]:
    """The words llama.cpp's BPE pre-tokenizer ``pre`` (a tokenizer.ggml.pre name) cuts ``text``
    into, before byte-level BPE merges each word."""
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"unknown pre-tokenizer '{pre}'; supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    return _split_words(text, _compiled(PRE_TOKENIZERS[pre].regexes))


@functools.lru_cache(maxsize=None)
def _compiled(patterns: tuple[str, ...]) -> tuple[regex.Pattern, ...]:
    return tuple(regex.compile(p) for p in patterns)


def _split_words(text: str, patterns: Sequence[regex.Pattern]) -> list[str]:
    """llama.cpp's unicode_regex_split: each regex cuts every piece into its matches and the
    unmatched text between them; later regexes never join what earlier ones cut."""
    pieces = [text]
    for pattern in patterns:
        cut: list[str] = []
        for piece in pieces:
            end = 0
            for match in pattern.finditer(piece):
                if match.start() > end:
                    cut.append(piece[end : match.start()])
                if match.end() > match.start():
                    cut.append(match.group())
                end = match.end()
            if end < len(piece):
                cut.append(piece[end:])
        pieces = cut
    return pieces


def _pre_tokenizer(meta: Mapping[str, Any]) -> tuple[str, _PreTokenizer]:
    name = _scalar(meta, "tokenizer.ggml.pre", "str", default="")
    if not name:
        warnings.warn("tokenizer metadata: no 'tokenizer.ggml.pre', using the 'default' pre-tokenizer "
                      "(as llama.cpp does; generation quality may suffer)", stacklevel=3)
        name = "default"
    if name not in PRE_TOKENIZERS:
        raise ValueError(f"tokenizer metadata: unknown pre-tokenizer 'tokenizer.ggml.pre' = '{name}'; "
                         f"supported: {', '.join(sorted(PRE_TOKENIZERS))}")
    return name, PRE_TOKENIZERS[name]


# ----------------------------------------------------------------------------------------------
# the two merge algorithms


def _merge_pairs(symbols: list[str], priority) -> list[str]:
    """The merge loop both of llama.cpp's tokenizers share: repeatedly joins the adjacent pair
    whose ``priority(left, right)`` is lowest (leftmost first on ties; None: never joined).
    Returns the symbols with "" in place of each one merged into its left neighbour."""
    prev = list(range(-1, len(symbols) - 1))
    succ = list(range(1, len(symbols) + 1))
    succ[-1] = -1
    queue: list[tuple] = []  # (priority, left, right, merged text)

    def push(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        key = priority(symbols[left], symbols[right])
        if key is not None:
            heapq.heappush(queue, (key, left, right, symbols[left] + symbols[right]))

    for right in range(1, len(symbols)):
        push(right - 1, right)
    while queue:
        _, left, right, merged = heapq.heappop(queue)
        if not symbols[left] or not symbols[right] or symbols[left] + symbols[right] != merged:
            continue  # outdated: a neighbour was merged since
        symbols[left] = merged
        symbols[right] = ""
        succ[left] = succ[right]
        if succ[left] >= 0:
            prev[succ[left]] = left
        push(prev[left], left)
        push(left, succ[left])
    return symbols


def _symbol_ids(symbols: list[str], token_to_id: dict[str, int], fallback) -> list[int]:
    """Token ids of the merged symbols ("" skipped); `fallback(symbol)` gives the ids of a symbol
    that is not a token."""
    ids: list[int] = []
    for symbol in symbols:
        if not symbol:
            continue
        token = token_to_id.get(symbol)
        if token is not None:
            ids.append(token)
        else:
            ids.extend(fallback(symbol))
    return ids


class _SentencePieceEncoder:
    """llama.cpp's llm_tokenizer_spm_session: bigram merges by token score."""

    def __init__(self, token_to_id: dict[str, int], scores: list[float], byte_token):
        self._token_to_id = token_to_id
        self._scores = scores
        self._byte_token = byte_token  # byte value -> token id

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, whose spaces are already escaped as "▁"."""
        if not text:
            return []

        def priority(left: str, right: str):
            token = self._token_to_id.get(left + right)
            return None if token is None else -self._scores[token]

        symbols = _merge_pairs(list(text), priority)  # from one code point each
        # a symbol that is no token falls back to the byte tokens of its UTF-8
        return _symbol_ids(symbols, self._token_to_id,
                           lambda symbol: [self._byte_token(b) for b in symbol.encode("utf-8")])


class _BytePairEncoder:
    """llama.cpp's llm_tokenizer_bpe_session: regex pre-split, then merges by rank per word."""

    _CACHE_LIMIT = 1 << 17

    def __init__(self, token_to_id: dict[str, int], merges: list[str], pre: _PreTokenizer):
        self._token_to_id = token_to_id
        self._ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(merges):
            cut = merge.find(" ", 1)  # "left right", cut at the first space after the first character
            pair = (merge[:cut], merge[cut + 1 :]) if cut >= 0 else ("", "")
            self._ranks.setdefault(pair, rank)  # the first rank of a repeated pair counts
        self._patterns = _compiled(pre.regexes)
        self._ignore_merges = pre.ignore_merges
        self._word_ids: dict[str, tuple[int, ...]] = {}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in _split_words(text, self._patterns):
            word_ids = self._word_ids.get(word)
            if word_ids is None:
                if len(self._word_ids) >= self._CACHE_LIMIT:
                    self._word_ids.clear()
                word_ids = self._word_ids[word] = self._encode_word(_byte_level(word))
            ids.extend(word_ids)
        return ids

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """Ids of one byte-level word."""
        if self._ignore_merges and word in self._token_to_id:
            return (self._token_to_id[word],)
        symbols = _merge_pairs(list(word), lambda left, right: self._ranks.get((left, right)))
        # llama.cpp falls back to the single-byte strings of the symbol's UTF-8, skipping those
        # that are not tokens (only ASCII bytes can be)
        return tuple(_symbol_ids(symbols, self._token_to_id, self._ascii_byte_ids))

    def _ascii_byte_ids(self, symbol: str) -> list[int]:
        ids = (self._token_to_id.get(chr(b)) if b < 0x80 else None for b in symbol.encode("utf-8"))
        return [token for token in ids if token is not None]


# ----------------------------------------------------------------------------------------------


class Tokenizer:
    """llama.cpp's tokenizer for a GGUF vocabulary (``llama`` SentencePiece or ``gpt2`` BPE).

    Attributes: ``model``, ``pre`` (pre-tokenizer name, None for ``llama``), ``tokens``,
    ``n_vocab``, ``bos_id``, ``eos_id``, ``eot_id``, ``eom_id``, ``unk_id``, ``pad_id`` (None when
    the vocabulary has none), ``add_bos``, ``add_eos``, ``add_space_prefix``, ``clean_spaces``,
    ``eog_ids`` (every end-of-generation token).
    """

    def __init__(self, meta: Mapping[str, Any]):
        """Builds from GGUF metadata: a mapping of GGUF keys to Python values (see from_metadata)."""
        self._read_vocabulary(meta)
        self._read_model(meta)
        self._read_special_tokens(meta)
        self._pieces: list[bytes | None] = [None] * self.n_vocab  # token_to_piece(special=True), lazily

    def _read_vocabulary(self, meta: Mapping[str, Any]) -> None:
        """Token texts, scores and attributes."""
        tokens = _array(meta, "tokenizer.ggml.tokens", "str", min_len=1, required=True)
        n = self.n_vocab = len(tokens)
        # llama.cpp renames empty tokens so that every text is distinct and non-empty
        self.tokens: tuple[str, ...] = tuple(text or f"[EMPTY_{i}]" for i, text in enumerate(tokens))
        self._token_to_id = self._index_tokens(self.tokens)
        scores = _array(meta, "tokenizer.ggml.scores", "number", min_len=n)
        self._scores = [float(s) for s in scores[:n]] if scores is not None else [0.0] * n
        types = _array(meta, "tokenizer.ggml.token_type", "int", min_len=n)
        self._attrs = [_ATTR_OF_TYPE.get(t, 0) for t in types[:n]] if types is not None else [_NORMAL] * n

    def _read_model(self, meta: Mapping[str, Any]) -> None:
        """The merge algorithm and the flags that depend on it (llama.cpp's defaults per model
        and pre-tokenizer, then the metadata's add_space_prefix)."""
        self.model = _scalar(meta, "tokenizer.ggml.model", "str")
        if self.model == "llama":
            self.pre = None
            self._default_ids = {"bos": 1, "eos": 2, "unk": 0}
            self.add_space_prefix, self._default_add_bos, self.clean_spaces = True, True, False
            self._encoder = _SentencePieceEncoder(self._token_to_id, self._scores, self._byte_token)
        elif self.model == "gpt2":
            self.pre, pre = _pre_tokenizer(meta)
            self._default_ids = {"bos": 11, "eos": 11}
            self.add_space_prefix, self._default_add_bos, self.clean_spaces = False, pre.add_bos, pre.clean_spaces
            merges = _array(meta, "tokenizer.ggml.merges", "str", required=True)
            self._encoder = _BytePairEncoder(self._token_to_id, merges, pre)
        else:
            raise ValueError(f"tokenizer metadata: unknown tokenizer model 'tokenizer.ggml.model' = "
                             f"'{self.model}'; supported: {', '.join(SUPPORTED_MODELS)}")
        self.add_space_prefix = _scalar(meta, "tokenizer.ggml.add_space_prefix", "bool", self.add_space_prefix)

    def _read_special_tokens(self, meta: Mapping[str, Any]) -> None:
        """Special ids, add_bos / add_eos, EOT / EOM / end-of-generation tokens, and the tokens
        searched in the text (llama.cpp's cache_special_tokens: longest, in bytes, first)."""
        ids = self._special_ids(meta, self._default_ids)
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = ids["bos"], ids["eos"], ids["unk"], ids["pad"]
        self.add_bos = _scalar(meta, "tokenizer.ggml.add_bos_token", "bool", self._default_add_bos)
        self.add_eos = _scalar(meta, "tokenizer.ggml.add_eos_token", "bool", False)
        for flag, token, name in ((self.add_bos, self.bos_id, "bos"), (self.add_eos, self.eos_id, "eos")):
            if flag and token is None:
                raise ValueError(f"tokenizer metadata: 'tokenizer.ggml.add_{name}_token' is true "
                                 f"but 'tokenizer.ggml.{name}_token_id' is not set")
        self._detect_named_tokens(ids)
        self.eot_id, self.eom_id = ids["eot"], ids["eom"]
        self.eog_ids = self._end_of_generation_ids(ids)
        special = [i for i, a in enumerate(self._attrs) if a & (_CONTROL | _USER_DEFINED | _UNKNOWN)]
        self._special_tokens = sorted(special, key=lambda i: (-len(self.tokens[i].encode("utf-8")), i))

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Tokenizer:
        """Builds from GGUF metadata: GGUF keys -> Python values (str, int, float, bool, lists;
        e.g. ``meta["tokenizer.ggml.tokens"]`` is a list of str). Raises ValueError naming the
        key for a missing or invalid entry, an unknown model or an unknown pre-tokenizer."""
        return cls(meta)

    @classmethod
    def from_gguf(cls, path) -> Tokenizer:
        """Builds from the ``tokenizer.*`` metadata of a GGUF file."""
        from gguf import GGUFReader

        try:
            reader = GGUFReader(path)
        except (ValueError, EOFError, IndexError) as e:  # what GGUFReader raises for a bad or truncated file
            raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
        meta = {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}
        try:
            return cls(meta)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    # -- tokenize ---------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of ``text``, exactly as llama.cpp's llama_tokenize(add_special, parse_special).

        add_bos: llama.cpp's ``add_special``. True or None (the default) adds the BOS and EOS
            tokens where the vocabulary asks for them (``add_bos`` / ``add_eos``, from
            tokenizer.ggml.add_bos_token / add_eos_token); False adds neither. As in llama.cpp,
            True does not add a BOS the vocabulary does not ask for.
        special: also match control and unknown tokens written in the text (e.g. "<|im_start|>");
            user-defined tokens are always matched.
        """
        if not isinstance(text, str):
            raise TypeError(f"tokenize: text must be a str, got {type(text).__name__}")
        add_special = True if add_bos is None else bool(add_bos)
        ids: list[int] = []
        if add_special and self.add_bos:
            ids.append(self.bos_id)
        fragments = self._partition_special(text, special) if text else []
        if self.model == "llama":
            after_special = True  # the text start counts as following a special token
            for fragment in fragments:
                if isinstance(fragment, int):
                    ids.append(fragment)
                    after_special = True
                    continue
                if self.add_space_prefix and after_special:
                    fragment = " " + fragment
                ids += self._encoder.encode(fragment.replace(" ", _SPM_SPACE))
                after_special = False
        else:
            for fragment in fragments:
                if isinstance(fragment, int):
                    ids.append(fragment)
                else:
                    ids += self._encoder.encode(fragment)
        if add_special and self.add_eos:
            ids.append(self.eos_id)
        return ids

    def _partition_special(self, text: str, special: bool) -> list[str | int]:
        """llama.cpp's tokenizer_st_partition: the text cut into raw fragments (str) and special
        token ids (int), each special token searched in turn, longest first."""
        fragments: list[str | int] = [text]
        for token in self._special_tokens:
            if not special and self._attrs[token] & (_CONTROL | _UNKNOWN):
                continue
            needle = self.tokens[token]
            if not any(isinstance(f, str) and needle in f for f in fragments):
                continue
            cut: list[str | int] = []
            for fragment in fragments:
                if isinstance(fragment, int) or needle not in fragment:
                    cut.append(fragment)
                    continue
                for k, part in enumerate(fragment.split(needle)):
                    if k:
                        cut.append(token)
                    if part:
                        cut.append(part)
            fragments = cut
        return fragments

    # -- detokenize -------------------------------------------------------------------------

    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """The bytes token ``token_id`` stands for (llama_token_to_piece without lstrip);
        control and unknown tokens give b"" unless ``special``."""
        self._check_id(token_id)
        if not special and self._attrs[token_id] & (_CONTROL | _UNKNOWN):
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = self._render(token_id)
        return piece

    def detokenize_bytes(self, ids: Iterable[int], special: bool = False) -> bytes:
        """llama.cpp's llama_detokenize(remove_special=False, unparse_special=special) as raw bytes:
        pieces joined, the first piece's leading space dropped when ``add_space_prefix``, and
        tokenization spaces cleaned up when the vocabulary asks for it (``clean_spaces``)."""
        pieces = []
        drop_space = self.add_space_prefix
        for token_id in ids:
            piece = self.token_to_piece(token_id, special)
            if drop_space and piece.startswith(b" "):
                piece = piece[1:]
            drop_space = False
            pieces.append(piece)
        text = b"".join(pieces)
        return _clean_up_spaces(text) if self.clean_spaces else text

    def detokenize(self, ids: Iterable[int], special: bool = False) -> str:
        """Text of ``ids`` (see detokenize_bytes); invalid UTF-8 becomes U+FFFD."""
        return self.detokenize_bytes(ids, special).decode("utf-8", errors="replace")

    def is_control(self, token_id: int) -> bool:
        """Whether ``token_id`` is a control token (BOS, EOS, <|im_start|>, ...)."""
        self._check_id(token_id)
        return bool(self._attrs[token_id] & _CONTROL)

    def is_eog(self, token_id: int) -> bool:
        """Whether generating ``token_id`` ends generation."""
        return token_id in self.eog_ids

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _index_tokens(tokens: Sequence[str]) -> dict[str, int]:
        token_to_id: dict[str, int] = {}
        for i, text in enumerate(tokens):
            first = token_to_id.setdefault(text, i)
            if first != i:
                raise ValueError(f"tokenizer metadata: 'tokenizer.ggml.tokens' has duplicate token {text!r} "
                                 f"at ids {first} and {i}")
        return token_to_id

    def _special_ids(self, meta: Mapping[str, Any], defaults: dict[str, int]) -> dict[str, int | None]:
        """Special token ids: the metadata's, else the model's defaults; an id outside the
        vocabulary is ignored (with a warning), as llama.cpp does."""
        keys = {
            "bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "eom": "eom_token_id",
            "unk": "unknown_token_id", "pad": "padding_token_id",
            **{fim: f"{fim}_token_id" for fim in _FIM_TEXTS},
        }  # fmt: skip
        ids: dict[str, int | None] = {}
        for name, key in keys.items():
            default = defaults.get(name)
            if default is not None and default >= self.n_vocab:
                default = None
            value = _scalar(meta, f"tokenizer.ggml.{key}", "int", None)
            if value is not None and not 0 <= value < self.n_vocab:
                warnings.warn(f"tokenizer metadata: 'tokenizer.ggml.{key}' = {value} is outside the "
                              f"vocabulary of {self.n_vocab} tokens; using {default}", stacklevel=3)
                value = None
            ids[name] = default if value is None else value
        return ids

    def _detect_named_tokens(self, ids: dict[str, int | None]) -> None:
        """llama.cpp's auto-detection of EOT / EOM / fill-in-the-middle tokens by their text when
        the metadata does not name them; such a token becomes a control token."""
        for name, texts in (("eot", _EOT_TEXTS), ("eom", ("<|eom_id|>",)), *_FIM_TEXTS.items()):
            if ids[name] is not None:
                continue
            found = [self._token_to_id[t] for t in texts if t in self._token_to_id]
            if found:
                ids[name] = min(found)
                self._attrs[ids[name]] |= _CONTROL

    def _end_of_generation_ids(self, ids: dict[str, int | None]) -> frozenset[int]:
        eog = {self._token_to_id[t] for t in _EOG_TEXTS if t in self._token_to_id}
        for token in eog:
            self._attrs[token] |= _CONTROL
        eog.update(ids[name] for name in ("fim_pad", "fim_rep", "fim_sep", "eos", "eot", "eom"))
        eog.discard(None)
        return frozenset(eog)

    def _byte_token(self, byte: int) -> int:
        """SentencePiece byte fallback: the <0xNN> token, else the byte as a one-character token."""
        token = self._token_to_id.get(f"<0x{byte:02X}>")
        if token is None and byte < 0x80:
            token = self._token_to_id.get(chr(byte))
        if token is None:
            raise ValueError(f"tokenize: the vocabulary has no byte token <0x{byte:02X}> for byte fallback")
        return token

    def _render(self, token_id: int) -> bytes:
        """Piece of a token when special tokens are shown (llama.cpp's token_to_piece cache)."""
        text, attr = self.tokens[token_id], self._attrs[token_id]
        if attr & (_CONTROL | _UNKNOWN | _USER_DEFINED):
            return text.encode("utf-8")
        if attr & _NORMAL:
            return text.replace(_SPM_SPACE, " ").encode("utf-8") if self.model == "llama" else _decode_byte_level(text)
        if attr & _BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                raise ValueError(f"token {token_id} {text!r} is a byte token but not spelled <0xNN>") from None
        return b""  # unused or undefined tokens render as nothing

    def _check_id(self, token_id: int) -> None:
        if not _is_int(token_id) or not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id!r} is outside the vocabulary [0, {self.n_vocab})")


def _clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's clean_spaces passes in llama_detokenize (Hugging Face's
    clean_up_tokenization_spaces), transcribed on the same in-place byte buffer:
    1. drop a space before ? ! . ,   2. " ' " -> "'"   3. drop the space before 's 'm 're 've."""
    buf = bytearray(text)

    def drop_space_before_punctuation(n: int) -> int:
        total = 1 if n else 0
        for i in range(1, n):
            x = buf[i]
            if buf[i - 1] == 0x20 and x in b"?!.,":
                total -= 1
            buf[total] = x
            total += 1
        return total

    def join_lone_apostrophe(n: int) -> int:
        total = 1 if n else 0
        i = 1
        while i < n:
            x = buf[i]
            if x == 0x27 and i + 1 < n and buf[i - 1] == 0x20 and buf[i + 1] == 0x20:
                total -= 1
                i += 1
                buf[i] = 0  # the next space is skipped (and no longer reads as a space)
            buf[total] = x
            total += 1
            i += 1
        return total

    def attach_contractions(n: int) -> int:
        total = 1 if n else 0
        for i in range(1, n):
            x = buf[i]
            if buf[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
                x1 = buf[i + 1]
                if x1 in b"sm" or (i + 2 < n and (buf[i + 1 : i + 3] in (b"re", b"ve"))):
                    total -= 1
            buf[total] = x
            total += 1
        return total

    n = len(buf)
    for clean_pass in (drop_space_before_punctuation, join_lone_apostrophe, attach_contractions):
        n = clean_pass(n)
    return bytes(buf[:n])
