import json
import re

import numpy as np
import pytest

from ggtune.chat import read_chat_template
from ggtune.data import (IGNORE, BatchOptions, BatchStream, DataError, Samples, Shuffled, chat_samples,
                         load_training_data, make_batch, read_text, seed_rng_state, shuffle_samples,
                         text_samples, unescape)

BOS, EOS = 1, 2
SPECIAL = {"<|im_start|>": BOS, "<|im_end|>": EOS}


class ByteTokenizer:
    """One token per UTF-8 byte (id = byte + 3); with special=True the two marker strings are
    single tokens. Plenty to check where samples and masks fall."""
    bos_id, eos_id = BOS, EOS

    def tokenize(self, text, add_bos=False, special=False):
        parts = re.split("(<\\|im_start\\|>|<\\|im_end\\|>)", text) if special else [text]
        out = [BOS] if add_bos else []
        for part in parts:
            if special and part in SPECIAL:
                out.append(SPECIAL[part])
            else:
                out += [b + 3 for b in part.encode()]
        return out


def toks(text):
    return [b + 3 for b in text.encode()]


TOK = ByteTokenizer()


def identity_shuffle(samples):
    n = samples.count
    return Shuffled(order=np.arange(n), offsets=np.zeros(n, np.int64), next_rng_state="")


# ---- reading and samples ------------------------------------------------------------------------

def test_unescape():
    assert unescape(r"a\nb\r\t\'\"\\") == "a\nb\r\t'\"\\"
    assert unescape(r"\x41\xc3\xa9") == "Aé"
    assert unescape(r"\q\x4") == r"\q\x4"  # unknown or short sequences stay
    with pytest.raises(DataError, match="not valid UTF-8"):
        unescape(r"\xff")


def test_read_text_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.txt: training data is empty"):
        read_text(empty)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin1.txt: .*not UTF-8.*0xe9 at byte offset 6, line 2"):
        read_text(latin)
    with pytest.raises(DataError, match="missing.txt: cannot read"):
        read_text(tmp_path / "missing.txt")


def test_every_token_samples():
    s = text_samples("abcdefghij", TOK, n_ctx=4)  # N = 10
    assert s.tokens.tolist() == toks("abcdefghij")
    assert s.begins.tolist() == [0, 1, 2, 3, 4, 5]  # 0, then 1 .. N-n_ctx-1
    assert s.sizes.tolist() == [4] * 6
    with pytest.raises(DataError, match=r"<text>: training data has 3 tokens, fewer than one context of n_ctx=4"):
        text_samples("abc", TOK, n_ctx=4)


def sample_texts(s):
    return [bytes((s.tokens[b:b + n] - 3).astype(np.uint8)).decode() for b, n in zip(s.begins, s.sizes)]


def test_sample_start_variants():
    text = "junk##one##two words##"
    s = text_samples(text, TOK, n_ctx=8, sample_start="##")
    assert sample_texts(s) == ["one", "two words"]
    s = text_samples(text, TOK, n_ctx=8, sample_start="##", include_sample_start=True)
    assert sample_texts(s) == \
        ["##one", "##two words", "##"]
    s = text_samples(text, TOK, n_ctx=6, sample_start="##", overlapping_samples=True)
    assert sample_texts(s) == \
        ["one##t", "two wo"]
    s = text_samples("no pattern", TOK, n_ctx=4, sample_start="@@")
    assert s.count == 1 and "not found" in s.notes[0]
    with pytest.raises(DataError, match="every sample .* is empty"):
        text_samples("####", TOK, n_ctx=4, sample_start="##")


def test_load_with_escape(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("x\nfirst\nsecond")
    s = load_training_data(path, TOK, n_ctx=8, sample_start=r"\n", escape=True)
    assert s.count == 2 and s.source == str(path)
    with pytest.raises(DataError, match="train_format"):
        load_training_data(path, TOK, n_ctx=8, train_format="csv")


# ---- batch rows ---------------------------------------------------------------------------------

def samples_of(*pieces):
    sizes = np.array([len(p) for p in pieces])
    return Samples(source="t", tokens=np.array(sum(pieces, []), np.int32),
                   begins=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), sizes=sizes)


def test_row_padding_with_eos():
    s = samples_of([10, 11, 12], [20, 21])
    inputs, targets, used = make_batch(s, identity_shuffle(s), 0, BatchOptions(n_ctx=5, n_batch=2), BOS, EOS)
    assert inputs.tolist() == [[BOS, 10, 11, 12, EOS], [BOS, 20, 21, EOS, EOS]]
    assert targets.tolist() == [[10, 11, 12, EOS, EOS], [20, 21, EOS, EOS, EOS]]
    assert used == 2 and inputs.dtype == np.int32 and targets.dtype == np.int32


def test_rows_without_a_leading_bos_start_with_the_sample():
    """--no-start-with-bos: the sample's first token is the first input (and no target), so the
    model trains on text as held-out windows without BOS score it."""
    s = samples_of([10, 11, 12], [20, 21])
    opts = BatchOptions(n_ctx=5, n_batch=2, start_with_bos=False)
    inputs, targets, used = make_batch(s, identity_shuffle(s), 0, opts, BOS, EOS)
    assert inputs.tolist() == [[10, 11, 12, EOS, EOS], [20, 21, EOS, EOS, EOS]]
    assert targets.tolist() == [[11, 12, EOS, EOS, EOS], [21, EOS, EOS, EOS, EOS]]
    assert used == 2


@pytest.mark.parametrize("eos,bos,fill", [
    (False, True, [10, 11, BOS, 20, 21, 22, BOS, 30]),
    (True, True, [10, 11, EOS, BOS, 20, 21, 22, EOS]),
    (True, False, [10, 11, EOS, 20, 21, 22, EOS, 30]),
    (False, False, [10, 11, 20, 21, 22, 30, 10, 11]),
])
def test_fill_with_next_samples(eos, bos, fill):
    s = samples_of([10, 11], [20, 21, 22], [30])
    opts = BatchOptions(n_ctx=8, n_batch=1, separate_with_eos=eos, separate_with_bos=bos,
                        fill_with_next_samples=True)
    inputs, targets, used = make_batch(s, identity_shuffle(s), 0, opts, BOS, EOS)
    assert targets[0].tolist() == fill
    assert inputs[0].tolist() == [BOS] + fill[:-1]
    assert used == {(False, True): 3, (True, True): 2, (True, False): 3, (False, False): 4}[(eos, bos)]


def test_random_offsets_and_wraparound():
    s = samples_of([10, 11, 12, 13], [20, 21, 22])
    shuffled = Shuffled(order=np.array([1, 0]), offsets=np.array([2, 1]), next_rng_state="")
    opts = BatchOptions(n_ctx=3, n_batch=3, sample_random_offsets=True)
    inputs, targets, used = make_batch(s, shuffled, 1, opts, BOS, EOS)
    assert targets.tolist() == [[11, 12, 13], [22, EOS, EOS], [11, 12, 13]]
    assert used == 3


# ---- shuffling ----------------------------------------------------------------------------------

def test_rng_is_std_mt19937():
    state = seed_rng_state(5489)  # std::mt19937's default seed: first outputs are well known
    sizes = np.array([5, 5])
    order_and_draws = shuffle_samples(state, sizes)
    # keys 3499211612, 581869302 -> sample 1 sorts first
    assert order_and_draws.order.tolist() == [1, 0]
    # offset draws are the 3rd and 4th outputs: 3890346734, 3586334585
    want = [int(4 * 3890346734 / (2**32 - 2)), int(4 * 3586334585 / (2**32 - 2))]
    assert order_and_draws.offsets.tolist() == want


def test_shuffle_is_seeded_permutation():
    sizes = np.arange(1, 101)
    a = shuffle_samples(seed_rng_state(7), sizes)
    b = shuffle_samples(seed_rng_state(7), sizes)
    c = shuffle_samples(seed_rng_state(8), sizes)
    assert a.order.tolist() == b.order.tolist() != c.order.tolist()
    assert sorted(a.order.tolist()) == list(range(100))
    assert np.all((a.offsets >= 0) & (a.offsets < sizes[a.order]))
    assert a.next_rng_state != seed_rng_state(7)
    with pytest.raises(DataError, match="rng_state"):
        shuffle_samples("garbage", sizes)


def stream(samples, state=None, **kw):
    return BatchStream(samples, BatchOptions(n_ctx=4, n_batch=3), bos_id=BOS, eos_id=EOS, seed=3,
                       state=state, **kw)


def test_stream_resume_is_exact_across_epochs():
    s = text_samples("the quick brown fox", TOK, n_ctx=4)  # 15 samples: an epoch is 5 batches
    full = stream(s)
    want = [full.next_batch() for _ in range(12)]
    assert [b.epoch_completed for b in want] == [False] * 4 + [True] + [False] * 4 + [True] + [False] * 2
    first = stream(s)
    for _ in range(7):
        first.next_batch()
    saved = first.state
    resumed = stream(s, state=saved)
    assert not resumed.reshuffled
    for b in want[7:]:
        got = resumed.next_batch()
        np.testing.assert_array_equal(got.inputs, b.inputs)
        np.testing.assert_array_equal(got.targets, b.targets)
    # epochs use different permutations
    assert not np.array_equal(want[0].inputs, want[5].inputs)


def test_stream_reshuffles_on_changed_data_or_request():
    s = text_samples("the quick brown fox", TOK, n_ctx=4)
    a = stream(s)
    a.next_batch()
    saved = a.state
    assert saved.next_sample == 3
    changed = text_samples("the quick brown fix", TOK, n_ctx=4)
    assert changed.samples_hash() != s.samples_hash()
    assert stream(changed, state=saved).reshuffled
    assert stream(changed, state=saved).state.next_sample == 0
    assert stream(s, state=saved, force_reshuffle=True).reshuffled
    assert not stream(s, state=saved).reshuffled


# ---- chat ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template(smollm2_path):
    return read_chat_template(smollm2_path)


def conversation(*turns):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


def test_chat_loss_only_on_assistant_tokens(template):
    lines = [conversation(("user", "hi"), ("assistant", "yo"), ("user", "?"), ("assistant", "ok!")), ""]
    s = chat_samples(lines, TOK, template, n_ctx=256)
    assert s.count == 1
    trained = s.tokens[s.trainable].tolist()
    assert trained == toks("yo") + [EOS] + toks("ok!") + [EOS]
    assert s.tokens[0] != BOS  # the template's leading <|im_start|> is the row's BOS
    opts = BatchOptions(n_ctx=int(s.sizes[0]) + 3, n_batch=1)
    inputs, targets, _ = make_batch(s, identity_shuffle(s), 0, opts, BOS, EOS)
    assert [t for t in targets[0].tolist() if t != IGNORE] == trained
    assert targets[0, -3:].tolist() == [IGNORE] * 3  # padding carries no loss in chat data
    assert inputs[0, 0] == BOS


def test_chat_errors_name_file_and_line(tmp_path, template):
    def load(*lines):
        path = tmp_path / "c.jsonl"
        path.write_text("\n".join(lines))
        return load_training_data(path, TOK, n_ctx=64, train_format="chat", chat_template=template)

    good = conversation(("user", "a"), ("assistant", "b"))
    assert load(good, good).count == 2
    separators = json.dumps({"messages": [{"role": "user", "content": "x\u2028y\r"},
                                          {"role": "assistant", "content": "z"}]}, ensure_ascii=False)
    assert load("\ufeff" + good, separators).count == 2  # BOM skipped, U+2028 is not a line break
    with pytest.raises(DataError, match=r"c.jsonl:2: not valid JSON"):
        load(good, "{oops")
    with pytest.raises(DataError, match=r"c.jsonl:1: the conversation has no assistant message"):
        load(conversation(("user", "a")))
    with pytest.raises(DataError, match=r"c.jsonl:1: messages\[0\] must be"):
        load(json.dumps({"messages": [{"role": "user"}]}))
    with pytest.raises(DataError, match=r'c.jsonl:1: expected an object \{"messages"'):
        load("[1, 2]")
    with pytest.raises(DataError, match=r"c.jsonl: training data has no conversations"):
        load("   ", "")
    with pytest.raises(DataError, match="chat template"):
        load_training_data(tmp_path / "c.jsonl", TOK, n_ctx=64, train_format="chat")


class LlamaCppTokenizer:
    """The real SmolLM2 vocabulary through llama-cpp-python, behind data.py's tokenizer interface."""

    def __init__(self, model):
        self.model = model
        self.bos_id, self.eos_id = model.token_bos(), model.token_eos()

    def tokenize(self, text, add_bos=False, special=False):
        return self.model.tokenize(text.encode(), add_bos=add_bos, special=special)


def test_chat_masks_with_the_real_vocabulary(template, smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(model_path=smollm2_path, vocab_only=True, verbose=False)
    tok = LlamaCppTokenizer(model)
    line = conversation(("user", "Name a colour."), ("assistant", "Blue, like the sky."))
    s = chat_samples([line], tok, template, n_ctx=128)
    trained = s.tokens[s.trainable].tolist()
    assert trained[-1] == tok.eos_id  # <|im_end|> closes the answer
    assert model.detokenize(trained[:-1]).decode() == "Blue, like the sky."
    # before the answer: the whole prompt up to the assistant header, none of it trained
    first = int(np.argmax(s.trainable))
    assert not s.trainable[:first].any() and s.trainable[first:first + len(trained)].all()
    prompt = model.detokenize(s.tokens[:first].tolist(), special=True).decode()
    assert prompt.endswith("<|im_start|>assistant\n") and "Name a colour." in prompt
    # after it only the template's trailing newline, untrained
    assert model.detokenize(s.tokens[first + len(trained):].tolist()).decode() == "\n"
