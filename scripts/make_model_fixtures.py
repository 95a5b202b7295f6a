"""Records llama.cpp's logits on an F32 copy of SmolLM2, plain and with a random GGUF adapter.

Run: PYTHONPATH=python:tests python scripts/make_model_fixtures.py
Needs llama-cpp-python. Writes tests/fixtures/model/smollm2_f32_logits.npz: the token ids, a
fixed subset of vocabulary columns (random ones plus every row's arg-max), and llama.cpp's logits
at those columns, float32. The tests rebuild the F32 copy and the adapter bit-identically
(tests/tiny_models.py) and compare ggtune's logits with these.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from tiny_models import FIXTURE_ADAPTER, write_f32_copy, write_fixture_adapter  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "model", "smollm2_f32_logits.npz")
TEXT = "/usr/share/common-licenses/GPL-3"
N_TOKENS = 40
N_RANDOM_COLUMNS = 3000
LORA_USER_SCALE = 0.75


def llama_cpp_logits(model_path: str, tokens: list[int], lora_path: str | None = None) -> np.ndarray:
    """llama.cpp's logits of every token, F32 KV cache, 2 threads: f32 [n, V]."""
    import llama_cpp

    kwargs = dict(lora_path=lora_path, lora_scale=LORA_USER_SCALE) if lora_path else {}
    llm = llama_cpp.Llama(model_path, n_ctx=256, n_batch=256, logits_all=True, n_threads=2,
                          type_k=0, type_v=0, verbose=False, **kwargs)
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    del llm
    return logits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="SmolLM2 Q4_1 GGUF (default: the cached one)")
    parser.add_argument("--out", default=FIXTURE)
    args = parser.parse_args(argv)
    import llama_cpp
    from ggtune.fetch import smollm2_path

    src = args.model or str(smollm2_path())
    with tempfile.TemporaryDirectory() as tmp:
        f32 = write_f32_copy(src, os.path.join(tmp, "smollm2_f32.gguf"))
        adapter = os.path.join(tmp, "adapter.gguf")
        write_fixture_adapter(adapter, f32)
        vocab = llama_cpp.Llama(f32, vocab_only=True, verbose=False)
        tokens = vocab.tokenize(open(TEXT, encoding="utf-8").read().encode(), add_bos=False)[:N_TOKENS]
        plain = llama_cpp_logits(f32, tokens)
        lora = llama_cpp_logits(f32, tokens, adapter)
    rng = np.random.default_rng(0)
    columns = np.union1d(rng.choice(plain.shape[1], N_RANDOM_COLUMNS, replace=False),
                         np.concatenate([plain.argmax(1), lora.argmax(1)])).astype(np.int32)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.savez_compressed(args.out, tokens=np.array(tokens, dtype=np.int32), columns=columns,
                        logits=plain[:, columns], lora_logits=lora[:, columns],
                        lora_user_scale=np.float32(LORA_USER_SCALE),
                        adapter=np.array(repr(FIXTURE_ADAPTER)))
    print(f"wrote {args.out}: {len(tokens)} tokens x {len(columns)} columns, "
          f"lora moved logits by up to {np.abs(lora - plain).max():.3f}")


if __name__ == "__main__":
    main()
