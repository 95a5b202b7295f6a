"""Gemma 3 270M (Q4_K_M) against what llama.cpp recorded (tests/fixtures/model/gemma3_270m.npz,
scripts/make_gemma3_fixtures.py): ggtune's tokenizer, the float64 reference forward, and transformers.

Needs the model in ggtune's cache (~/.cache/ggtune/gemma-3-270m-q4_k_m.gguf, see the issue for how
to fetch it); the forward checks are `slow` (the reference dequantizes the 262k-row head in numpy).
"""

import os

import numpy as np
import pytest

from reference_model import ReferenceModel, mean_kl

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "model", "gemma3_270m.npz")
GEMMA3 = os.path.join(os.path.expanduser("~"), ".cache", "ggtune", "gemma-3-270m-q4_k_m.gguf")


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def gemma3_path():
    if not os.path.exists(GEMMA3):
        pytest.skip(f"{GEMMA3} not cached")
    return GEMMA3


def test_fixture_is_complete_and_small(golden):
    assert os.path.getsize(FIXTURE) < 6e6
    assert golden["logits"].shape == (len(golden["positions"]), 262144)
    assert len(golden["sequence"]) > 512  # crosses the sliding window
    assert golden["sequence"][0] == 2 and golden["heldout"][0] != 2  # BOS first; none in the held-out text
    counts = golden["window_count"]
    assert np.isclose(float(golden["mean_ce"]), (golden["window_ce"] * counts).sum() / counts.sum())
    assert golden["f32copy_logits"].shape == (len(golden["positions"]), len(golden["f32copy_columns"]))
    assert len(golden["f32copy_window_ce"]) == len(golden["window_ce"])


def test_ggtune_tokenizer_matches_llama_cpp(golden, gemma3_path):
    from ggtune.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(gemma3_path)
    for key in [k for k in golden if k.startswith("text.")]:
        name = key[len("text."):]
        ids = tok.tokenize(str(golden[key]), add_bos=True, special=name.endswith("_special"))
        assert ids == golden[f"tokens.{name}"].tolist(), name


@pytest.fixture(scope="module")
def exact_reference(gemma3_path):
    return ReferenceModel(gemma3_path)


def relative_max_diff(expected: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / expected.std())


@pytest.mark.slow
def test_reference_is_llama_cpp_on_the_exact_math(golden, gemma3_path):
    """On the F32 copy llama.cpp does the exact math but for its float16 GELU table (and float32
    sums over 18 layers of Gemma's large activations: 1.39e-3 of the std measured, 2026-12-01)."""
    reference = ReferenceModel(gemma3_path, ggml_gelu=True)
    logits = reference.logits(golden["sequence"], positions=golden["positions"])[:, golden["f32copy_columns"]]
    assert relative_max_diff(golden["f32copy_logits"], logits) <= 2e-3


@pytest.mark.slow
def test_exact_reference_against_llama_cpp(golden, exact_reference):
    """The exact GELU moves the logits by ~3e-3 of their std; llama.cpp's 8-bit activations on the
    quantized model by a mean KL of ~0.02 at these positions (0.006 over the whole sequence)."""
    logits = exact_reference.logits(golden["sequence"], positions=golden["positions"])
    assert relative_max_diff(golden["f32copy_logits"], logits[:, golden["f32copy_columns"]]) <= 5e-3
    assert mean_kl(golden["logits"], logits) <= 0.05
    # llama.cpp's 8-bit activations flip one of the 6 arg-maxes (the exact top-2 gap there: 0.38)
    agree = logits.argmax(axis=1) == golden["sequence_argmax"][golden["positions"]]
    assert agree.sum() >= len(agree) - 1


@pytest.mark.slow
def test_exact_reference_heldout_losses(golden, exact_reference):
    losses = exact_reference.token_losses(golden["heldout"][:128])
    assert np.abs(losses - golden["f32copy_window0_losses"]).max() < 0.03  # measured 0.018: float32 sums
    assert abs(losses.mean() / golden["window0_losses"].mean() - 1) < 0.02  # llama.cpp's quantized run


def test_llama_cpp_rounding_barely_moves_the_heldout_perplexity(golden):
    """What an exact forward can expect against llama.cpp on the quantized model: the mean held-out
    cross-entropy of the F32 copy (exact math) and of the quantized run differ by well under 1%."""
    assert abs(float(golden["f32copy_mean_ce"]) / float(golden["mean_ce"]) - 1) < 0.005


@pytest.mark.slow
def test_transformers_matches_llama_cpp(golden, gemma3_path):
    """transformers' GGUF loader (dequantized to float32) runs the exact math of the same model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gemma3_path), gguf_file=os.path.basename(gemma3_path), dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(golden["sequence"][None].astype(np.int64))).logits[0].double()
    at = logits[golden["positions"]].numpy()
    assert relative_max_diff(golden["f32copy_logits"], at[:, golden["f32copy_columns"]]) <= 5e-3
    assert mean_kl(golden["logits"], at) <= 0.05
    targets = torch.tensor(golden["sequence"][1:].astype(np.int64))
    losses = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="none").numpy()
    assert np.abs(losses - golden["f32copy_sequence_losses"]).max() < 0.01


# ---- ggtune's forward against llama.cpp ------------------------------------------------------------
# Issue 11 asks for a mean KL <= 1e-3 at the fixture positions. On this model llama.cpp's own run is
# that sensitive to float32 rounding: through the 8-bit activations a difference in the last bit
# flips a rounding now and then, and 18 layers of Gemma's large activations amplify it. Measured
# (2026-12-01): llama.cpp with one norm weight moved by one ulp lands at a mean KL of 0.004-0.012
# from itself; ggtune's "ggml" path with 1e-7 relative noise on its norms at 0.011-0.019 from itself,
# where the exact path moves by 2e-11. Given llama.cpp's inputs, each ggtune layer reproduces its
# output to float32 rounding (1e-7 of the largest value per token) but for isolated rounding flips;
# on one token, where nothing is mixed across positions, "ggml" is llama.cpp to a KL of 2e-6.

def ggtune_model(gemma3_path, precision: str):
    from ggtune.model import load_model

    return load_model(gemma3_path, precision=precision, kv_type="f32")  # the fixture's cache


def logits_at_positions(model, golden) -> np.ndarray:
    h = model.hidden(golden["sequence"][None])
    return model.output_logits(np.ascontiguousarray(h[golden["positions"]]))


def test_ggml_precision_is_llama_cpp_on_one_token(golden, gemma3_path):
    """The BOS token alone: measured KL 2.2e-6 and 1.4e-3 of the std (the fixture keeps float16
    logits) with "ggml"; the exact products are 4.7e-3 away, llama.cpp's rounding."""
    model = ggtune_model(gemma3_path, "ggml")
    expected = golden["logits"][:1].astype(np.float64)
    logits = model.logits(golden["sequence"][:1])
    assert mean_kl(expected, logits) <= 1e-4
    assert relative_max_diff(expected, logits) <= 3e-3
    model.__init__(model.weights, precision="f32")
    assert mean_kl(expected, model.logits(golden["sequence"][:1])) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("precision, bound", [("ggml", 0.03), ("f32", 0.05), ("auto", 0.05)])
def test_ggtune_against_llama_cpp_at_the_fixture_positions(golden, gemma3_path, precision, bound):
    """Measured mean KL: ggml 0.013, f32 0.021, auto 0.021 (the noise above, not 1e-3)."""
    logits = logits_at_positions(ggtune_model(gemma3_path, precision), golden)
    assert mean_kl(golden["logits"], logits) <= bound


class NoisyNorms:
    """The kernels with every rms_norm output scaled by 1 + eps * N(0, 1): float32 rounding noise."""

    def __init__(self, kernels, eps: float):
        self.kernels, self.eps, self.rng = kernels, eps, np.random.default_rng(0)

    def __getattr__(self, name):
        return getattr(self.kernels, name)

    def rms_norm_forward(self, x, weight, eps, out, rstd):
        self.kernels.rms_norm_forward(x, weight, eps, out, rstd)
        out *= (1 + self.eps * self.rng.standard_normal(out.shape)).astype(np.float32)


@pytest.mark.slow
def test_llama_cpps_rounding_is_noisier_than_the_kl_bound(golden, gemma3_path):
    """Measured: the ggml path moves by a mean KL of 0.011 from itself under 1e-7 noise, the exact
    path by 2e-11."""
    for precision, low, high in (("ggml", 1e-3, 1.0), ("f32", 0.0, 1e-8)):
        model = ggtune_model(gemma3_path, precision)
        clean = logits_at_positions(model, golden)
        model.block.k = NoisyNorms(model.block.k, 1e-7)
        assert low < mean_kl(clean, logits_at_positions(model, golden)) <= high, precision


@pytest.mark.llamacpp
def test_llama_cpp_moves_off_its_fixture_when_one_weight_moves_one_ulp(golden, gemma3_path, tmp_path):
    """llama.cpp against itself: blk.0.attn_norm.weight one ulp up, measured mean KL 0.0069 at the
    fixture positions, mean |loss difference| 0.083 over the sequence (ggtune's ggml path: 0.013, 0.083)."""
    import shutil
    import sys

    pytest.importorskip("llama_cpp")
    import gguf

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    from make_gemma3_fixtures import sequence_scores

    nudged = str(tmp_path / "nudged.gguf")
    shutil.copy(gemma3_path, nudged)
    reader = gguf.GGUFReader(nudged, "r+")
    weight = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight").data.view(np.float32)
    weight[...] = np.nextafter(weight, np.float32(np.inf))
    del reader, weight
    scores = sequence_scores(nudged, golden["sequence"].tolist())
    assert mean_kl(golden["logits"], scores[golden["positions"]]) > 1e-3


@pytest.mark.llamacpp
def test_llama_cpp_reproduces_the_gemma3_fixture(golden, gemma3_path):
    pytest.importorskip("llama_cpp")
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    from make_gemma3_fixtures import record

    fresh = record(gemma3_path)
    for key in [k for k in golden if k.startswith("tokens.")] + ["sequence", "heldout", "f32copy_columns"]:
        assert np.array_equal(fresh[key], golden[key]), key
    for key in ("sequence_losses", "window_ce", "f32copy_sequence_losses", "f32copy_window_ce", "f32copy_logits"):
        np.testing.assert_allclose(fresh[key], golden[key], atol=1e-3, rtol=0, err_msg=key)
    np.testing.assert_allclose(fresh["logits"].astype(np.float32), golden["logits"].astype(np.float32), atol=0.05)
