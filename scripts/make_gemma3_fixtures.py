"""Records llama.cpp on Gemma 3 270M (Q4_K_M): tokenization, logits, per-token losses, held-out perplexity.

Run: PYTHONPATH=python:tests python scripts/make_gemma3_fixtures.py [--model GGUF] [--out FILE]
Needs llama-cpp-python. Writes tests/fixtures/model/gemma3_270m.npz (llama.cpp with an F32 KV
cache, 2 threads):
- `text.<case>` / `tokens.<case>`: the texts of TEXTS and llama.cpp's token ids (with BOS, specials
  parsed only in the `*_special` cases);
- `sequence`: BOS + the first SEQUENCE_TOKENS - 1 tokens of GPL-3 (longer than the 512-token sliding
  window); `sequence_losses` (float32 [T-1]) the next-token losses there, `sequence_argmax` every
  position's arg-max, `positions` and `logits` (float16 [len(positions), 262144]) the full logits
  of a few positions on both sides of the window;
- `heldout`: the held-out tokens of the quality benchmark's corpus (benchmarks/torch_reference.py:
  the last 20% by characters of the four licence texts, tokenized without BOS); `window_ce` the mean
  cross-entropy of each non-overlapping 128-token window (no BOS, 127 predictions each), `window_count`
  their predictions, `mean_ce` the mean over all predictions, `window0_losses` the first window's
  per-token losses;
- `f32copy_*`: llama.cpp on an F32 copy of the model (tests/tiny_models.write_f32_copy, every tensor
  dequantized by gguf.quants, so the exact math of the quantized model without llama.cpp's rounding of
  activations): `f32copy_columns` (random vocabulary columns plus every recorded position's arg-max),
  `f32copy_logits` (float32, the positions x those columns), `f32copy_sequence_losses`, and the
  held-out windows' `f32copy_window_ce`, `f32copy_mean_ce`, ...
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from tiny_models import write_f32_copy  # noqa: E402
from torch_reference import GEMMA3_PATH, heldout_text, windows  # noqa: E402

FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "model", "gemma3_270m.npz")
GPL3 = "/usr/share/common-licenses/GPL-3"
ODDITIES = ("  Leading spaces,\ttabs,\n\n\nblank lines, trailing spaces   \nnon\u00a0breaking, caf\u00e9 na\u00efve "
            "e\u0301 (combining), \ufb01 ligature, zero\u200bwidth, \u65e5\u672c\u8a9e, \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac, "
            "\u0440\u0443\u0441\u0441\u043a\u0438\u0439, emoji \U0001f389\U0001f44d\U0001f3fd, CRLF\r\nline, "
            "multiple     spaces, <start_of_turn>user literal<end_of_turn>, digits 1234567890 3.14159, "
            "\u00ab\u00a0quotes\u00a0\u00bb \u2014 dashes \u2013 and \u2026 ellipsis\n")
SEQUENCE_TOKENS = 640
POSITIONS = (0, 1, 255, 511, 512, 639)
CTX = 128
N_RANDOM_COLUMNS = 3000


def texts() -> dict[str, str]:
    with open(GPL3, encoding="utf-8") as f:
        gpl = f.read()
    return {"gpl3_2000": gpl[:2000], "oddities": ODDITIES, "oddities_special": ODDITIES, "gpl3": gpl}


def llama(model: str, n_ctx: int, vocab_only: bool = False):
    import llama_cpp

    return llama_cpp.Llama(model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=2,
                           type_k=0, type_v=0, vocab_only=vocab_only, verbose=False)


def losses_of(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """-log softmax(logits[t])[tokens[t+1]], float64 [T-1]."""
    z = np.asarray(logits[: len(tokens) - 1], dtype=np.float64)
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return lse - z[np.arange(len(tokens) - 1), tokens[1:]]


def record(model: str) -> dict[str, np.ndarray]:
    vocab = llama(model, 512, vocab_only=True)
    out: dict[str, np.ndarray] = {}
    cases = texts()
    for name, text in cases.items():
        ids = vocab.tokenize(text.encode("utf-8"), add_bos=True, special=name.endswith("_special"))
        if name != "gpl3":
            out[f"text.{name}"], out[f"tokens.{name}"] = np.array(text), np.array(ids, dtype=np.int32)
    sequence = vocab.tokenize(cases["gpl3"].encode("utf-8"), add_bos=True, special=False)[:SEQUENCE_TOKENS]
    heldout = vocab.tokenize(heldout_text().encode("utf-8"), add_bos=False, special=False)
    del vocab
    out.update(sequence=np.array(sequence, dtype=np.int32), positions=np.array(POSITIONS, dtype=np.int32),
               heldout=np.array(heldout, dtype=np.int32))

    scores = sequence_scores(model, sequence)
    out.update(sequence_losses=losses_of(scores, sequence).astype(np.float32),
               sequence_argmax=np.argmax(scores, axis=1).astype(np.int32),
               logits=scores[list(POSITIONS)].astype(np.float16), **heldout_windows(model, heldout))
    del scores
    with tempfile.TemporaryDirectory() as tmp:
        f32 = write_f32_copy(model, os.path.join(tmp, "f32.gguf"))
        scores = sequence_scores(f32, sequence)
        at = scores[list(POSITIONS)]
        rng = np.random.default_rng(0)
        columns = np.union1d(rng.choice(at.shape[1], N_RANDOM_COLUMNS, replace=False),
                             np.concatenate([at.argmax(1), out["logits"].argmax(1)])).astype(np.int32)
        out.update(f32copy_columns=columns, f32copy_logits=at[:, columns],
                   f32copy_sequence_losses=losses_of(scores, sequence).astype(np.float32),
                   **{f"f32copy_{k}": v for k, v in heldout_windows(f32, heldout).items()})
    with open(model, "rb") as f:
        out["model_sha256_head"] = np.array(hashlib.sha256(f.read(1 << 20)).hexdigest())
    return out


def sequence_scores(model: str, sequence: list[int]) -> np.ndarray:
    """llama.cpp's logits of every position, float32 [T, V]."""
    llm = llama(model, SEQUENCE_TOKENS)
    llm.eval(sequence)
    scores = np.array(llm.scores[: len(sequence)], dtype=np.float32)
    del llm
    return scores


def heldout_windows(model: str, heldout: list[int]) -> dict[str, np.ndarray]:
    """Cross-entropy of every non-overlapping CTX-token window (no BOS), its count, their mean and
    the first window's per-token losses."""
    llm = llama(model, CTX)
    window_ce, window_count, first = [], [], None
    for window in windows(heldout, CTX):
        llm.reset()
        llm.eval(window)
        losses = losses_of(llm.scores, window)
        first = losses if first is None else first
        window_ce.append(losses.mean())
        window_count.append(len(losses))
    del llm
    ce, counts = np.array(window_ce), np.array(window_count)
    return dict(window_ce=ce, window_count=counts, mean_ce=np.float64((ce * counts).sum() / counts.sum()),
                window0_losses=first.astype(np.float32))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=GEMMA3_PATH)
    parser.add_argument("--out", default=FIXTURE)
    args = parser.parse_args(argv)
    arrays = record(args.model)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB): {len(arrays['heldout'])} held-out tokens, "
          f"llama.cpp mean cross-entropy {float(arrays['mean_ce']):.4f} over {len(arrays['window_ce'])} windows "
          f"(perplexity {np.exp(float(arrays['mean_ce'])):.3f})")


if __name__ == "__main__":
    main()
