"""`ggtune perplexity` and `ggtune generate`, sampling, perplexity chunking, CLI errors."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import ggtune
from ggtune.cli import main
from ggtune.evaluate import chunk_tokens, perplexity
from ggtune.generate import chat_prompt, generate, sample_next
from ggtune.gguf_io import read_model_gguf
from reference_model import ReferenceLlama
from tiny_models import write_random_adapter, write_tiny_llama

TEXT = "the cat sat on the mat; then the hat went in the sea. " * 6


@pytest.fixture
def tiny(tmp_path):
    """A tiny model with a byte-level vocabulary and a ChatML template."""
    return write_tiny_llama(tmp_path / "tiny.gguf", byte_vocab=True, n_ctx=64, n_layer=2)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def reported_ce(out: str) -> float:
    return float(re.search(r"mean cross-entropy ([0-9.]+) nats", out).group(1))


# ----- perplexity -----

def test_chunk_tokens():
    chunks = chunk_tokens(list(range(11)), 4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [len(c) for c in chunk_tokens(list(range(9)), 4)] == [4, 4]  # a 1-token tail predicts nothing


def test_perplexity_is_mean_over_chunks(tiny):
    model = ggtune.load_model(tiny, precision="f32")
    tokens = model.tokenize(TEXT)
    ref = ReferenceLlama(tiny)
    chunks = chunk_tokens(tokens, 24)
    expected = [ref.cross_entropy(c) * (len(c) - 1) for c in chunks]
    seen = []
    result = perplexity(model, tokens, 24, batch_tokens=48, progress=lambda d, t: seen.append((d, t)))
    assert result.n_predictions == sum(len(c) - 1 for c in chunks)
    assert result.mean_ce == pytest.approx(sum(expected) / result.n_predictions, abs=1e-5)
    assert result.perplexity == pytest.approx(np.exp(result.mean_ce))
    full, tail = divmod(len(tokens), 24)
    assert tail >= 2  # the test covers a short last chunk
    assert seen[-1] == (len(tokens), len(tokens)) and len(seen) == (full + 1) // 2 + 1  # 2 chunks a batch


def test_perplexity_command(tiny, text_file, capsys):
    assert main(["perplexity", "--model", tiny, "--text", text_file, "--ctx", "32", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    model = ggtune.load_model(tiny)
    expected = perplexity(model, model.tokenize(TEXT), 32).mean_ce
    assert reported_ce(out) == pytest.approx(expected, abs=1e-4)
    assert re.search(r"perplexity [0-9.]+", out)
    assert re.search(r"perplexity \[#+\] (\d+)/\1 ", err)  # the progress bar reached the end


def test_perplexity_with_adapter(tiny, text_file, tmp_path, capsys):
    shapes = {name: (w.n_out, w.n_in) for name, w in read_model_gguf(tiny).weights_by_name().items()
              if name.startswith("blk.")}
    adapter = str(tmp_path / "adapter.gguf")
    write_random_adapter(adapter, shapes, rank=2, alpha=4.0, std=0.3)
    main(["perplexity", "--model", tiny, "--text", text_file, "--ctx", "32"])
    plain = reported_ce(capsys.readouterr().out)
    main(["perplexity", "--model", tiny, "--text", text_file, "--ctx", "32", "--lora", adapter, "--lora-scale", "0.5"])
    adapted = reported_ce(capsys.readouterr().out)
    model = ggtune.load_model(tiny, lora=[(adapter, 0.5)])
    assert adapted != pytest.approx(plain, abs=1e-3)
    assert adapted == pytest.approx(perplexity(model, model.tokenize(TEXT), 32).mean_ce, abs=1e-4)


# ----- generation -----

def test_greedy_generation_equals_reference_argmax(tiny):
    """KV-cached decoding picks, at each step, the arg-max of the full reference forward."""
    model = ggtune.load_model(tiny, precision="f32")
    prompt = model.tokenize("the cat")
    got = generate(model, prompt, 10, temp=0)
    ref = ReferenceLlama(tiny)
    tokens = list(prompt)
    for _ in range(10):
        nxt = int(np.argmax(ref.logits(tokens)[-1]))
        if nxt in model.tokenizer.eog_ids:
            break
        tokens.append(nxt)
    assert got == tokens[len(prompt):]


def test_generate_command_streams_text(tiny, capsys):
    assert main(["generate", "--model", tiny, "--prompt", "the cat", "-n", "12", "--temp", "0"]) == 0
    out = capsys.readouterr().out
    model = ggtune.load_model(tiny)
    expected = model.detokenize(generate(model, model.tokenize("the cat"), 12, temp=0))
    assert out == "the cat" + expected + "\n"


def test_generate_seed_is_reproducible(tiny, capsys):
    args = ["generate", "--model", tiny, "--prompt", "the", "-n", "16", "--temp", "1.5", "--top-k", "0",
            "--top-p", "1.0"]
    outs = []
    for seed in ("1", "1", "2"):
        main(args + ["--seed", seed])
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_chat_prompt_uses_the_gguf_template(tiny):
    model = ggtune.load_model(tiny)
    assert chat_prompt(model, "hi there") == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    ids = model.tokenize(chat_prompt(model, "hi"), special=True)
    assert ids[0] == 1 and 2 in ids  # <|im_start|> and <|im_end|> parsed as special tokens


def test_generate_chat_command(tiny, capsys):
    assert main(["generate", "--model", tiny, "--prompt", "hi", "--chat", "-n", "5", "--temp", "0"]) == 0
    model = ggtune.load_model(tiny)
    expected = generate(model, model.tokenize(chat_prompt(model, "hi"), special=True), 5, temp=0)
    assert capsys.readouterr().out == model.detokenize(expected) + "\n"


def test_sample_next():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 1.0, 2.9, -1.0], dtype=np.float32)
    assert sample_next(logits, rng, temp=0) == 1
    assert sample_next(logits, rng, temp=5.0, top_k=1) == 1
    assert all(sample_next(logits, rng, temp=1.0, top_k=0, top_p=0.3) == 1 for _ in range(50))
    assert {sample_next(logits, rng, temp=1.0, top_k=2, top_p=1.0) for _ in range(200)} == {1, 3}
    draws = np.array([sample_next(logits, rng, temp=2.0, top_k=0, top_p=1.0) for _ in range(4000)])
    p = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / 4000, p, atol=0.03)


# ----- errors -----

def test_missing_files_exit_2_with_one_line(tiny, text_file, tmp_path, capsys):
    cases = [
        (["perplexity", "--model", str(tmp_path / "none.gguf"), "--text", text_file], "--model: no such file"),
        (["perplexity", "--model", tiny, "--text", str(tmp_path / "none.txt")], "--text: no such file"),
        (["generate", "--model", tiny, "--prompt", "x", "--lora", str(tmp_path / "a.gguf")], "--lora: no such file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_model_exits_1_with_one_line(text_file, tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    assert main(["perplexity", "--model", str(bad), "--text", text_file]) == 1
    err = capsys.readouterr().err
    assert "bad.gguf: not a GGUF file" in err and err.count("\n") == 1


def test_console_script_has_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-m", "ggtune.cli", "generate", "--model", str(tmp_path / "x.gguf"),
                           "--prompt", "hi"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.strip() == f"ggtune generate: error: --model: no such file: {tmp_path / 'x.gguf'}"
