"""JSONL training records: prompt/completion, instruction, and --train-format auto."""

import json

import numpy as np
import pytest

from ggtune.chat import read_chat_template
from ggtune.data import DataError, load_training_data
from test_data import EOS, TOK, toks


@pytest.fixture(scope="module")
def template(smollm2_path):
    return read_chat_template(smollm2_path)


def write(tmp_path, name, *records):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records), encoding="utf-8")
    return path


def load(path, fmt="auto", template=None):
    return load_training_data(path, TOK, n_ctx=64, train_format=fmt, chat_template=template)


def test_completion_loss_on_the_completion_and_eos_only(tmp_path):
    path = write(tmp_path, "pc.jsonl", {"prompt": "Q: 2+2?", "completion": " 4"}, "",
                 {"prompt": "", "completion": "hi"})
    s = load(path)
    assert s.count == 2 and s.notes[0].startswith(f"{path}: training format 'completion'")
    first = s.tokens[s.begins[0]: s.begins[0] + s.sizes[0]].tolist()
    mask = s.trainable[s.begins[0]: s.begins[0] + s.sizes[0]].tolist()
    assert first == toks("Q: 2+2?") + toks(" 4") + [EOS]
    assert mask == [False] * len(toks("Q: 2+2?")) + [True] * (len(toks(" 4")) + 1)
    assert s.trainable[s.begins[1]: s.begins[1] + s.sizes[1]].all()  # no prompt: everything trained


def test_instruction_goes_through_the_chat_template(tmp_path, template):
    path = write(tmp_path, "alpaca.jsonl", {"instruction": "Translate", "input": "chat", "output": "cat"},
                 {"instruction": "Say hi", "output": "hi"})
    s = load(path, template=template)
    assert "'instruction'" in s.notes[0]
    # the same samples as the chat records the instruction stands for
    chat = write(tmp_path, "same.jsonl",
                 {"messages": [{"role": "user", "content": "Translate\n\nchat"},
                               {"role": "assistant", "content": "cat"}]},
                 {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]})
    c = load(chat, template=template)
    assert "'chat'" in c.notes[0]
    np.testing.assert_array_equal(s.tokens, c.tokens)
    np.testing.assert_array_equal(s.trainable, c.trainable)
    assert s.tokens[s.trainable].tolist() == toks("cat") + [EOS] + toks("hi") + [EOS]


def test_auto_is_text_for_other_files(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text('{"prompt": "a", "completion": "b"} ' * 20)
    s = load(path)
    assert s.trainable is None and "'text'" in s.notes[0]


@pytest.mark.parametrize("records, fmt, message", [
    ([{"text": "a"}], "auto", r"r.jsonl:1: cannot tell the JSONL format.*found 'text'"),
    (["", "[1]"], "auto", r"r.jsonl:2: cannot tell the JSONL format"),
    (["{bad"], "auto", r"r.jsonl:1: not valid JSON"),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "a"}], "auto", r"r.jsonl:2: 'completion' is missing"),
    ([{"prompt": "a", "completion": 3}], "completion", r"r.jsonl:1: 'completion' must be a string, not int"),
    ([{"prompt": "a", "completion": ""}], "completion", r"r.jsonl:1: the completion is empty"),
    ([{"instruction": "a", "output": "b"}, {"instruction": "a", "input": 1, "output": "b"}], "instruction",
     r"r.jsonl:2: 'input' must be a string"),
    ([{"instruction": "a", "output": ""}], "instruction", r"r.jsonl:1: the output is empty"),
    (["", " "], "completion", r"r.jsonl: training data has no records"),
])
def test_bad_records_name_file_and_line(tmp_path, template, records, fmt, message):
    path = write(tmp_path, "r.jsonl", *records)
    with pytest.raises(DataError, match=message):
        load(path, fmt, template)


def test_instruction_needs_a_chat_template(tmp_path):
    path = write(tmp_path, "i.jsonl", {"instruction": "a", "output": "b"})
    with pytest.raises(DataError, match="--train-format instruction needs the model's chat template"):
        load(path)
