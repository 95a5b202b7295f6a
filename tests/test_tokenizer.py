"""ggtune.tokenizer against llama.cpp.

* Golden fixtures (scripts/make_tokenizer_fixtures.py): llama.cpp, through llama-cpp-python,
  tokenized and detokenized a varied corpus and the whole GPL-3 with SmolLM2's vocabulary
  (byte-level BPE, pre-tokenizer "smollm"); every case must be reproduced exactly.
* Golden fixtures for the other paths: a small SentencePiece vocabulary the script defines (its
  metadata travels in the fixture), and SmolLM2's vocabulary under the llama3, gpt-2 and default
  pre-tokenizers, both tokenized by llama.cpp from vocabulary-only GGUFs.
* A small SentencePiece vocabulary written here, with hand-checked cases.
* Small BPE vocabularies for merge order, ignore_merges and the named pre-tokenizers.
* Clear errors for broken metadata.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from ggtune.tokenizer import PRE_TOKENIZERS, Tokenizer, pre_tokenize

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"
CASES = FIXTURES / "smollm2_cases.json"
GPL3_IDS = FIXTURES / "smollm2_gpl3.json"
SPM_CASES = FIXTURES / "spm_cases.json"
OTHER_PRE = FIXTURES / "smollm2_other_pre.json"
GPL3_TEXT = Path("/usr/share/common-licenses/GPL-3")


def load_fixture(path: Path) -> dict:
    if not path.exists():
        pytest.skip(f"golden fixture {path} is absent (make it with scripts/make_tokenizer_fixtures.py)")
    return json.loads(path.read_text(encoding="utf-8"))


def expected_bytes(case: dict, key: str) -> bytes:
    """A detokenized result stored as text, or as hex under key + "_hex" when not UTF-8."""
    return bytes.fromhex(case[key + "_hex"]) if key + "_hex" in case else case[key].encode("utf-8")


@pytest.fixture(scope="module")
def smollm2_meta(smollm2_path) -> dict:
    """SmolLM2's GGUF metadata as the model loader hands it over (read once: GGUFReader is slow)."""
    from gguf import GGUFReader

    return {name: field.contents() for name, field in GGUFReader(smollm2_path).fields.items()}


@pytest.fixture(scope="module")
def smollm2(smollm2_meta) -> Tokenizer:
    return Tokenizer.from_metadata(smollm2_meta)


# ---------------------------------------------------------------------------------------------
# SmolLM2 golden fixtures


def test_smollm2_special_ids_match_llama_cpp(smollm2):
    cases = load_fixture(CASES)
    assert smollm2.model == "gpt2" and smollm2.pre == "smollm" and smollm2.n_vocab == 49152
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.eot_id) == (cases["bos_id"], cases["eos_id"], cases["eot_id"])
    assert (smollm2.add_bos, smollm2.add_eos) == (cases["add_bos"], cases["add_eos"])
    assert sorted(smollm2.eog_ids) == cases["eog_ids"]
    assert [t for t in range(smollm2.n_vocab) if smollm2.is_control(t)] == cases["control_ids"]


def test_smollm2_tokenize_matches_llama_cpp(smollm2):
    cases = load_fixture(CASES)["tokenize"]
    assert len(cases) > 100
    mismatches = [
        (case["text"][:40], case["add_bos"], case["special"])
        for case in cases
        if smollm2.tokenize(case["text"], add_bos=case["add_bos"], special=case["special"]) != case["ids"]
    ]
    assert not mismatches


def test_smollm2_detokenize_matches_llama_cpp(smollm2):
    fixture = load_fixture(CASES)
    for case in fixture["tokenize"]:
        for special, key in ((False, "detokenized"), (True, "detokenized_special")):
            want = expected_bytes(case, key)
            assert smollm2.detokenize_bytes(case["ids"], special=special) == want, (case["text"][:40], special)
            assert smollm2.detokenize(case["ids"], special=special) == want.decode("utf-8", errors="replace")
    for case in fixture["detokenize"]:  # cut multi-byte characters, control tokens mid-sequence
        want = expected_bytes(case, "detokenized")
        assert smollm2.detokenize_bytes(case["ids"], special=case["special"]) == want, case
        assert smollm2.detokenize(case["ids"], special=case["special"]) == want.decode("utf-8", errors="replace")


def test_smollm2_pieces_match_llama_cpp(smollm2):
    pieces = load_fixture(CASES)["pieces"]
    for token, plain, shown in pieces:
        assert smollm2.token_to_piece(token) == bytes.fromhex(plain), token
        assert smollm2.token_to_piece(token, special=True) == bytes.fromhex(shown), token


def test_smollm2_gpl3_matches_llama_cpp(smollm2):
    fixture = load_fixture(GPL3_IDS)
    if not GPL3_TEXT.exists():
        pytest.skip(f"{GPL3_TEXT} is absent on this system")
    text = GPL3_TEXT.read_text(encoding="utf-8")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == fixture["text_sha256"], "GPL-3 text differs"
    want = np.frombuffer(zlib.decompress(base64.b64decode(fixture["ids_zlib_u4le_base64"])), dtype="<u4").tolist()
    assert len(want) == fixture["n_tokens"]
    got = smollm2.tokenize(text, add_bos=fixture["add_bos"], special=fixture["special"])
    first_difference = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert first_difference is None and len(got) == len(want), f"first difference at token {first_difference}"
    assert smollm2.detokenize(got) == text


def test_smollm2_tokenizes_70kb_quickly(smollm2_meta):
    """Not a benchmark: a guard against losing the per-word cache (the real figure is well under
    a second; the bound is loose because the test machine is shared)."""
    text = GPL3_TEXT.read_text(encoding="utf-8") if GPL3_TEXT.exists() else "Some words, 123 and more.\n" * 1400
    text = (text + text)[:70_000]
    tokenizer = Tokenizer.from_metadata(smollm2_meta)  # a fresh, empty word cache
    start = time.perf_counter()
    ids = tokenizer.tokenize(text)
    assert len(ids) > 10_000
    assert time.perf_counter() - start < 20.0


def test_sentencepiece_vocabulary_matches_llama_cpp():
    fixture = load_fixture(SPM_CASES)
    tokenizer = Tokenizer.from_metadata(fixture["metadata"])
    assert [tokenizer.bos_id, tokenizer.eos_id, tokenizer.eot_id] == [fixture[k] for k in ("bos_id", "eos_id", "eot_id")]
    assert (tokenizer.add_bos, tokenizer.add_eos) == (fixture["add_bos"], fixture["add_eos"])
    assert sorted(tokenizer.eog_ids) == fixture["eog_ids"]
    assert [t for t in range(tokenizer.n_vocab) if tokenizer.is_control(t)] == fixture["control_ids"]
    for case in fixture["tokenize"]:
        label = (case["text"][:40], case["add_bos"], case["special"])
        assert tokenizer.tokenize(case["text"], add_bos=case["add_bos"], special=case["special"]) == case["ids"], label
        for special, key in ((False, "detokenized"), (True, "detokenized_special")):
            assert tokenizer.detokenize_bytes(case["ids"], special=special) == expected_bytes(case, key), label


@pytest.mark.parametrize("pre", ["llama3", "gpt-2", "default"])
def test_other_pre_tokenizers_match_llama_cpp(smollm2_meta, pre):
    fixture = load_fixture(OTHER_PRE)
    meta = {k: v for k, v in smollm2_meta.items() if k != "tokenizer.ggml.add_bos_token"}
    tokenizer = Tokenizer.from_metadata({**meta, "tokenizer.ggml.pre": pre})
    for text, want in zip(fixture["texts"], fixture["ids"][pre], strict=True):
        assert tokenizer.tokenize(text, add_bos=fixture["add_bos"], special=fixture["special"]) == want, text[:40]


def test_from_gguf_equals_from_metadata(smollm2_path, smollm2):
    tokenizer = Tokenizer.from_gguf(smollm2_path)
    assert tokenizer.tokens == smollm2.tokens and tokenizer.eog_ids == smollm2.eog_ids
    text = "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n"
    assert tokenizer.tokenize(text, special=True) == smollm2.tokenize(text, special=True)


# ---------------------------------------------------------------------------------------------
# a SentencePiece ("llama") vocabulary written here


UNK, BOS, EOS = 0, 1, 2
BYTE0 = 3  # ids 3..258 are the byte tokens <0x00>..<0xFF>
# normal pieces and their scores; a higher score merges first
PIECES = {
    "▁": -10.0, "h": -10.0, "e": -10.0, "l": -10.0, "o": -10.0, "i": -10.0,
    "ll": -1.0, "he": -2.0, "▁he": -3.0, "llo": -4.0, "▁hello": -5.0, "▁▁": -6.0,
}  # fmt: skip


def spm_metadata(extra_pieces: dict[str, tuple[float, int]] | None = None, **keys) -> dict:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(PIECES)
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + list(PIECES.values())
    types = [2, 3, 3] + [6] * 256 + [1] * len(PIECES)
    for text, (score, token_type) in (extra_pieces or {}).items():
        tokens.append(text)
        scores.append(score)
        types.append(token_type)
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
    }
    meta.update({f"tokenizer.ggml.{k}": v for k, v in keys.items()})
    return meta


def ids_of(tokenizer: Tokenizer, *pieces: str) -> list[int]:
    return [tokenizer.tokens.index(p) for p in pieces]


def byte_ids(text: str) -> list[int]:
    return [BYTE0 + b for b in text.encode("utf-8")]


@pytest.fixture
def spm() -> Tokenizer:
    return Tokenizer.from_metadata(spm_metadata())


def test_spm_defaults_follow_llama_cpp(spm):
    # a "llama" vocabulary without the keys: BOS 1, EOS 2, UNK 0, add BOS, no EOS, space prefix
    assert (spm.bos_id, spm.eos_id, spm.unk_id) == (BOS, EOS, UNK)
    assert spm.add_bos and not spm.add_eos and spm.add_space_prefix
    assert spm.is_control(BOS) and spm.is_control(EOS) and not spm.is_control(UNK)
    assert spm.n_vocab == 3 + 256 + len(PIECES)


def test_spm_merges_highest_score_first(spm):
    # "hello" -> "▁hello" (space prefix). Symbols ▁ h e l l o; pairs that are tokens: he(-2), ll(-1).
    # ll merges first (-1); then he (-2), giving ▁ he ll o, and the new pairs ▁he(-3), llo(-4);
    # ▁he merges, then llo, and finally ▁he+llo = ▁hello(-5) is a token: one token.
    assert spm.tokenize("hello", add_bos=False) == ids_of(spm, "▁hello")
    # the default adds BOS ("tokenizer.ggml.add_bos_token" is absent: llama.cpp adds it for SPM)
    assert spm.tokenize("hello") == [BOS, *ids_of(spm, "▁hello")]


def test_spm_overlapping_higher_score_pair_wins():
    # With "el" at -0.5 it merges before "ll": ▁ h el l o. Then "hel", "ell", "elo"... are not
    # tokens, the ll pair is gone (its left l is inside "el") and he no longer fits: the rest stays.
    tokenizer = Tokenizer.from_metadata(spm_metadata({"el": (-0.5, 1)}))
    assert tokenizer.tokenize("hello", add_bos=False) == ids_of(tokenizer, "▁", "h", "el", "l", "o")


def test_spm_byte_fallback(spm):
    # "hé" -> "▁hé": "▁h" is not a token, "é" is not a piece: it goes out as its UTF-8 bytes C3 A9.
    assert spm.tokenize("hé", add_bos=False) == ids_of(spm, "▁", "h") + byte_ids("é")
    # an emoji is 4 bytes, each through <0xNN>
    assert spm.tokenize("😀", add_bos=False) == ids_of(spm, "▁") + byte_ids("😀")


def test_spm_spaces_become_separators(spm):
    # "hello  hi" -> "▁hello▁▁hi": ▁hello as above; the two ▁ merge (▁▁ -6); h and i stay apart
    # (no "hi" piece), and "▁▁h" is not a token.
    assert spm.tokenize("hello  hi", add_bos=False) == ids_of(spm, "▁hello", "▁▁", "h", "i")


def test_spm_special_tokens_only_when_asked(spm):
    # special=True: <s> and </s> are cut out; the text after a special token gets the space
    # prefix too, so "hello" is again ▁hello.
    assert spm.tokenize("<s>hello</s>", add_bos=False, special=True) == [BOS, *ids_of(spm, "▁hello"), EOS]
    # special=False: the marks are plain text: "▁<s>hello</s>". < s > / have no pieces (bytes);
    # "hello" has no ▁ before it here, so it is he + llo ("hello" itself is not a token).
    want = ids_of(spm, "▁") + byte_ids("<s>") + ids_of(spm, "he", "llo") + byte_ids("</s>")
    assert spm.tokenize("<s>hello</s>", add_bos=False) == want


def test_spm_user_defined_tokens_always_match():
    # user-defined tokens (type 4) are cut out even with special=False, as llama.cpp does; the
    # text after one gets the space prefix ("▁hello").
    tokenizer = Tokenizer.from_metadata(spm_metadata({"<tool>": (0.0, 4)}))
    tool = tokenizer.tokens.index("<tool>")
    assert tokenizer.tokenize("<tool>hello", add_bos=False) == [tool, *ids_of(tokenizer, "▁hello")]
    assert tokenizer.detokenize([tool]) == "<tool>"  # rendered without special, unlike control tokens


def test_spm_bos_eos_flags_and_empty_text():
    tokenizer = Tokenizer.from_metadata(spm_metadata(add_bos_token=False, add_eos_token=True))
    assert tokenizer.tokenize("hello") == [*ids_of(tokenizer, "▁hello"), EOS]
    assert tokenizer.tokenize("hello", add_bos=False) == ids_of(tokenizer, "▁hello")  # no specials at all
    assert tokenizer.tokenize("") == [EOS]  # empty text: no fragment, only the added specials
    assert Tokenizer.from_metadata(spm_metadata()).tokenize("") == [BOS]


def test_spm_without_space_prefix():
    # add_space_prefix = false: "hello" stays "hello" -> he + llo (see the special-token case)
    tokenizer = Tokenizer.from_metadata(spm_metadata(add_space_prefix=False))
    assert tokenizer.tokenize("hello", add_bos=False) == ids_of(tokenizer, "he", "llo")


def test_spm_detokenize(spm):
    hello = ids_of(spm, "▁hello")
    # the first piece's leading space is dropped (it was the added prefix)
    assert spm.detokenize(hello) == "hello"
    # llama_detokenize(remove_special=false): BOS renders as nothing but uses up the space drop
    assert spm.detokenize([BOS, *hello, EOS]) == " hello"
    assert spm.detokenize([BOS, *hello, EOS], special=True) == "<s> hello</s>"
    assert spm.detokenize([UNK]) == "" and spm.detokenize([UNK], special=True) == "<unk>"
    # byte tokens join into UTF-8; a cut character becomes U+FFFD only at the end
    assert spm.detokenize(byte_ids("é😀")) == "é😀"
    assert spm.detokenize(byte_ids("é")[:1] + hello) == "\ufffd hello"
    assert spm.token_to_piece(BYTE0 + 0xC3) == b"\xc3"
    assert spm.token_to_piece(ids_of(spm, "▁▁")[0]) == b"  "


def test_spm_round_trip_of_ascii_text(spm):
    text = "hello  hi oh\nhe said: hello"
    assert spm.detokenize(spm.tokenize(text, add_bos=False)) == text
    # with BOS first, llama_detokenize keeps the prefix space (see test_spm_detokenize)
    assert spm.detokenize(spm.tokenize(text)) == " " + text


def test_control_looking_tokens_become_eot_and_control():
    # "<|im_end|>" typed as a normal token: llama.cpp takes it as EOT and makes it a control token
    tokenizer = Tokenizer.from_metadata(spm_metadata({"<|im_end|>": (0.0, 1)}))
    im_end = tokenizer.tokens.index("<|im_end|>")
    assert tokenizer.eot_id == im_end and tokenizer.is_control(im_end)
    assert tokenizer.eog_ids == {EOS, im_end}
    assert tokenizer.tokenize("<|im_end|>", add_bos=False, special=True) == [im_end]


# ---------------------------------------------------------------------------------------------
# small byte-level BPE vocabularies


def bpe_metadata(tokens: list[str], merges: list[str], pre: str = "gpt-2", **keys) -> dict:
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": ["<|endoftext|>", *tokens],
        "tokenizer.ggml.token_type": [3] + [1] * len(tokens),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 0,
    }
    meta.update({f"tokenizer.ggml.{k}": v for k, v in keys.items()})
    return meta


def test_bpe_merges_lowest_rank_first():
    tokens = ["a", "b", "c", "ab", "bc"]
    # "abc": ranks decide which pair merges: "b c" has rank 0 -> a + bc; swapped -> ab + c
    first_bc = Tokenizer.from_metadata(bpe_metadata(tokens, ["b c", "a b"]))
    assert first_bc.tokenize("abc") == [1, 5]
    first_ab = Tokenizer.from_metadata(bpe_metadata(tokens, ["a b", "b c"]))
    assert first_ab.tokenize("abc") == [4, 3]


def test_bpe_ignore_merges_for_llama3():
    # llama3 emits a word that is a token whole, even when the merges cannot build it
    tokens = ["a", "b", "c", "ab", "abc"]
    assert Tokenizer.from_metadata(bpe_metadata(tokens, ["a b"], pre="gpt-2")).tokenize("abc") == [4, 3]
    llama3 = Tokenizer.from_metadata(bpe_metadata(tokens, ["a b"], pre="llama3"))
    assert llama3.add_bos  # the llama3 pre-tokenizer implies add_bos, as in llama.cpp
    assert llama3.tokenize("abc") == [0, 5]


def test_bpe_space_is_byte_level_and_unknown_bytes_are_dropped():
    # " a" is one word; the space byte is spelled "Ġ" (U+0120). "é" has no token, and llama.cpp's
    # fallback only finds single ASCII-byte tokens, so it vanishes.
    tokenizer = Tokenizer.from_metadata(bpe_metadata(["a", "Ġ", "Ġa"], ["Ġ a"]))
    assert tokenizer.tokenize(" a") == [3]
    assert tokenizer.tokenize("aé a") == [1, 3]
    assert tokenizer.detokenize([3, 1, 2]) == " aa "


def test_bpe_clean_spaces_on_detokenize():
    # gpt-2 keeps llama.cpp's clean_spaces: " ," " ." lose the space, " ' " closes up, " 's" attaches
    tokens = ["Ġ", "a", ",", ".", "'", "s", "t"]
    tokenizer = Tokenizer.from_metadata(bpe_metadata(tokens, []))
    assert tokenizer.clean_spaces
    ids = tokenizer.tokenize("a , a . ' a 's a 't")
    assert tokenizer.detokenize(ids) == "a, a.'a's a 't"
    smollm = Tokenizer.from_metadata(bpe_metadata(tokens, [], pre="smollm"))
    assert not smollm.clean_spaces and smollm.detokenize(ids) == "a , a . ' a 's a 't"


@pytest.mark.parametrize(
    ("pre", "text", "words"),
    [
        # gpt-2: letters, digits and other runs each take one leading space; contractions split
        ("gpt-2", "Hello world's 2024 tests!!  ok", ["Hello", " world", "'s", " 2024", " tests", "!!", " ", " ok"]),
        # llama3: digits in groups of three; case-insensitive contractions; a non-letter before letters
        ("llama3", "I'M 1234567 x\n\n  y", ["I", "'M", " ", "123", "456", "7", " x", "\n\n", " ", " y"]),
        # smollm: every digit alone, then the gpt-2 rules
        ("smollm", "v12 3.5", ["v", "1", "2", " ", "3", ".", "5"]),
        # default: punctuation runs cut first, then gpt-2 words, digit runs, triples of digits
        ("default", "a,b 12345", ["a", ",", "b", " ", "123", "45"]),
    ],
)
def test_pre_tokenizers_cut_words_like_llama_cpp(pre, text, words):
    assert pre_tokenize(text, pre) == words
    assert "".join(words) == text


# ---------------------------------------------------------------------------------------------
# errors


def test_error_names_the_missing_key():
    meta = spm_metadata()
    del meta["tokenizer.ggml.tokens"]
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_metadata(meta)
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({"tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ValueError, match="tokenizer.ggml.merges"):
        meta = bpe_metadata(["a"], [])
        del meta["tokenizer.ggml.merges"]
        Tokenizer.from_metadata(meta)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tokenizer.ggml.tokens", "abc", "array of str"),
        ("tokenizer.ggml.tokens", ["a", 3], r"tokens'\[1\] must be a str"),
        ("tokenizer.ggml.scores", [0.0], "expected at least"),
        ("tokenizer.ggml.token_type", [1.5] * 400, r"token_type'\[0\] must be a int"),
        ("tokenizer.ggml.bos_token_id", "1", "bos_token_id' must be a int"),
        ("tokenizer.ggml.add_bos_token", 1, "add_bos_token' must be a bool"),
    ],
)
def test_error_names_the_invalid_key(key, value, message):
    meta = spm_metadata()
    meta[key] = value
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_metadata(meta)


def test_error_for_unknown_model_and_pre_tokenizer():
    with pytest.raises(ValueError, match=r"'bert'; supported: llama, gpt2"):
        Tokenizer.from_metadata({**spm_metadata(), "tokenizer.ggml.model": "bert"})
    with pytest.raises(ValueError, match=r"unknown pre-tokenizer .*'qwen9'; supported: .*smollm"):
        Tokenizer.from_metadata(bpe_metadata(["a"], [], pre="qwen9"))
    assert {"default", "llama3", "llama-bpe", "smollm", "gpt-2"} <= set(PRE_TOKENIZERS)


def test_error_for_inconsistent_vocabulary():
    with pytest.raises(ValueError, match="duplicate token 'a' at ids 1 and 2"):
        Tokenizer.from_metadata(bpe_metadata(["a", "a"], []))
    meta = spm_metadata(add_bos_token=True)
    meta["tokenizer.ggml.bos_token_id"] = 10**6  # out of range: ignored, default 1 kept (llama.cpp warns)
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        assert Tokenizer.from_metadata(meta).bos_id == BOS
    meta = bpe_metadata(["a"], [], add_eos_token=True)
    del meta["tokenizer.ggml.eos_token_id"]  # the BPE default id 11 is outside a 2-token vocabulary
    with pytest.raises(ValueError, match="add_eos_token' is true but 'tokenizer.ggml.eos_token_id' is not set"):
        Tokenizer.from_metadata(meta)


def test_error_for_bad_ids_and_files(spm, tmp_path):
    with pytest.raises(ValueError, match="token id 100000 is outside the vocabulary"):
        spm.detokenize([100000])
    with pytest.raises(TypeError, match="text must be a str"):
        spm.tokenize(b"bytes")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"this is not a gguf file at all")
    with pytest.raises(ValueError, match="model.gguf"):
        Tokenizer.from_gguf(not_gguf)
