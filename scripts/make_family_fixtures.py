"""Records llama.cpp's logits on the tiny random models of every family (tests/tiny_models.FIXTURE_CASES).

Run: PYTHONPATH=python:tests python scripts/make_family_fixtures.py [--out FILE]
Needs llama-cpp-python. Writes tests/fixtures/model/families.npz: per case `<case>.tokens` (int32
[32]) and `<case>.logits` (float32 [32, V], llama.cpp with an F32 KV cache, 2 threads, every
position's logits), and for FIXTURE_LORA_CASE `<case>.lora_logits` with the fixture adapter
(tiny_models.write_fixture_adapter, general.architecture set to the family) at scale
`lora_user_scale`. The tests rebuild every model and adapter bit-identically from tiny_models.py.
The Gemma 3 270M fixture is scripts/make_gemma3_fixtures.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)
from make_model_fixtures import LORA_USER_SCALE, llama_cpp_logits  # noqa: E402
from tiny_models import (FIXTURE_ADAPTER, FIXTURE_CASES, FIXTURE_LORA_CASE, fixture_tokens,  # noqa: E402
                         write_fixture_adapter, write_fixture_model)

FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "model", "families.npz")


def record(tmp: str) -> dict[str, np.ndarray]:
    """Every case's tokens and llama.cpp logits, keyed as the fixture file stores them."""
    out = {"lora_user_scale": np.float32(LORA_USER_SCALE), "adapter": np.array(repr(FIXTURE_ADAPTER))}
    for name in FIXTURE_CASES:
        model = write_fixture_model(os.path.join(tmp, f"{name}.gguf"), name)
        tokens = [int(t) for t in fixture_tokens(name)]
        out[f"{name}.tokens"] = np.array(tokens, dtype=np.int32)
        out[f"{name}.logits"] = llama_cpp_logits(model, tokens)
        if name == FIXTURE_LORA_CASE:
            adapter = os.path.join(tmp, f"{name}.lora.gguf")
            write_fixture_adapter(adapter, model)
            out[f"{name}.lora_logits"] = llama_cpp_logits(model, tokens, adapter)
        print(f"{name}: {len(tokens)} tokens x {out[f'{name}.logits'].shape[1]} logits, "
              f"std {out[f'{name}.logits'].std():.3f}", flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=FIXTURE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        arrays = record(tmp)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
