"""The PEFT export applies in Hugging Face: transformers + peft on SmolLM2 agree with ggtune.

Needs torch, transformers and peft (not CI dependencies: `pip install torch==2.13.0 transformers
peft`); skipped without them. transformers loads SmolLM2 Q4_1 straight from the GGUF, dequantized
to float32 (gguf-py's Q4_1: the same values ggtune's kernels use, checked below) with attn_q /
attn_k rows permuted back to Hugging Face order; PeftModel applies the directory `ggtune
export-peft` wrote. ggtune runs the same model with precision="f32" and the GGUF adapter.

Tolerance: measured max |Δlogit| ≈ 1e-4 on logits up to ~35 (the adapter itself moves them by ~15),
both with and without the adapter: identical float32 weights, so what remains is float32 rounding
in a different order of operations (GEMM blocking, attention, RMS norm, LoRA as x·Aᵀ·Bᵀ beside
the base matmul in both). Asserted: 1e-3.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # loads SmolLM2 in transformers (about a minute)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from safetensors.numpy import load_file, save_file  # noqa: E402

from ggtune import peft as ggtune_peft  # noqa: E402
from ggtune.adapters import read_gguf_adapter  # noqa: E402
from ggtune.model import load_model  # noqa: E402

TEXT = "The GNU General Public License is a free, copyleft license for software and other kinds of works."
ATOL = 1e-3


def seeded_adapter(path, model_path) -> str:
    """benchmarks/merge_quality.py's random adapter on the seven matrices of every layer."""
    bench_path = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_quality.py"
    spec = importlib.util.spec_from_file_location("merge_quality", bench_path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.write_seeded_adapter(path, model_path)


def export_peft_cli(adapter, model_path, out_dir) -> None:
    """`ggtune export-peft --lora A --model M --output DIR` through its argparse handler."""
    parser = argparse.ArgumentParser(prog="ggtune")
    ggtune_peft.add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export-peft", "--lora", str(adapter), "--model", model_path, "--output", str(out_dir)])
    assert args.func(args) == 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm2_path):
    tmp = tmp_path_factory.mktemp("peft")
    adapter = seeded_adapter(tmp / "adapter.gguf", smollm2_path)
    export_peft_cli(adapter, smollm2_path, tmp / "peft")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2_path), gguf_file=os.path.basename(smollm2_path), dtype=torch.float32)
    hf.eval()
    ours = load_model(smollm2_path, lora=[(adapter, 1.0)], precision="f32")
    ids = ours.tokenize(TEXT)
    return dict(tmp=tmp, adapter=adapter, hf=hf, ours=ours, ids=ids, model_path=smollm2_path)


def hf_logits(hf, peft_dir, ids) -> np.ndarray:
    """f32 [S, V] of the transformers model with the PEFT adapter in peft_dir applied."""
    model = peft.PeftModel.from_pretrained(hf, str(peft_dir))
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    model.unload()  # takes the LoRA layers out again: `hf` is shared by the tests
    return logits


def test_weights_are_dequantized_identically(setup):
    """attn_v is not permuted: transformers' float32 weight is exactly ggtune's dequantized Q4_1."""
    ours = setup["ours"].weights.layers[3].matrices["attn_v"].dequantize()
    theirs = setup["hf"].model.layers[3].self_attn.v_proj.weight.detach().numpy()
    np.testing.assert_array_equal(theirs, ours)


def test_transformers_with_exported_adapter_matches_ggtune(setup):
    ids = setup["ids"]
    ours = setup["ours"].logits(np.array(ids))
    plain = load_model(setup["model_path"], precision="f32").logits(np.array(ids))
    theirs = hf_logits(setup["hf"], setup["tmp"] / "peft", ids)
    assert np.abs(ours - plain).max() > 1.0  # the adapter changes the logits a lot
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)
    with torch.no_grad():  # and without the adapter: the base models agree as closely
        base = setup["hf"](torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(base, plain, atol=ATOL, rtol=0)


def test_without_unpermuting_the_logits_disagree(setup):
    """The same export with q_proj / k_proj lora_B left in GGUF row order does not apply."""
    tmp = setup["tmp"]
    raw = tmp / "peft-not-unpermuted"
    shutil.copytree(tmp / "peft", raw)
    tensors = load_file(str(raw / ggtune_peft.ADAPTER_WEIGHTS))
    _, gguf_pairs = read_gguf_adapter(setup["adapter"])
    replaced = 0
    for base, (_, b) in gguf_pairs.items():
        kind = base.split(".")[2]
        if kind in ("attn_q", "attn_k"):
            key = f"base_model.model.{ggtune_peft.peft_module_name(base)}.lora_B.weight"
            assert not np.array_equal(tensors[key], b)  # the export did permute these rows
            tensors[key] = np.ascontiguousarray(b)
            replaced += 1
    assert replaced == 60
    save_file(tensors, str(raw / ggtune_peft.ADAPTER_WEIGHTS), metadata={"format": "pt"})
    ours = setup["ours"].logits(np.array(setup["ids"]))
    wrong = hf_logits(setup["hf"], raw, setup["ids"])
    assert np.abs(wrong - ours).max() > 100 * ATOL
