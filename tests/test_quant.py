"""GGUF weight formats: dequantization and row gather, bit-exact with gguf.quants on every tier."""

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

from ggtune import _core

# Types gguf.quants can decode (Q8_1 is checked against its own formula below).
DEQUANT_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
                 T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
# Types gguf.quants can also encode, so real quantizer output is tested too.
QUANTIZE_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]

# Byte offsets of the float16 scale / min fields in each block (ggml-common.h).
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q8_1: [0, 2],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

# ggml's block_q8_1 holds two float16 (d, s): 36 bytes; gguf-py still lists the old float32
# layout (40 bytes), which no current ggml reads or writes.
QUANT_SIZES = {**GGML_QUANT_SIZES, T.Q8_1: (32, 36)}

ROWS = [1, 31, 32, 33]


def column_counts(qtype):
    block = QUANT_SIZES[qtype][0]
    if block == 1:
        return [1, 31, 33, 96, 257]  # tails of every SIMD width
    return sorted({c for c in (block, 3 * block, 256, 768) if c % block == 0})  # 32: 1, 3, 8, 24 blocks


def random_finite_halves(rng, shape):
    """Float16 bit patterns of every finite kind (subnormals included), as uint16."""
    bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    exponent_all_ones = (bits & 0x7C00) == 0x7C00
    return np.where(exponent_all_ones, bits & 0xBFFF, bits).astype(np.uint16)


def random_rows(rng, qtype, rows, cols):
    """Random bytes [rows, row_bytes] with finite float16 scales; float types hold finite values."""
    if qtype == T.F32:
        return rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint8)
    if qtype in (T.F16, T.BF16):
        return random_finite_halves(rng, (rows, cols)).view(np.uint8)
    block, size = QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for offset in HALF_FIELDS[qtype]:
        halves = random_finite_halves(rng, (rows, cols // block))
        data[:, :, offset:offset + 2] = halves.view(np.uint8).reshape(rows, cols // block, 2)
    return data.reshape(rows, -1)


def quantized_rows(rng, qtype, rows, cols):
    values = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(3.0)
    return np.ascontiguousarray(quants.quantize(values, qtype).view(np.uint8).reshape(rows, -1))


def run_dequantize(data, qtype, cols):
    out = np.full((data.shape[0], cols), np.nan, dtype=np.float32)
    _core.dequantize(data, int(qtype), out)
    return out


def assert_bits_equal(got, want):
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), np.asarray(want, np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", list(T), ids=lambda t: t.name)
def test_type_info_matches_gguf(qtype):
    if qtype in DEQUANT_TYPES or qtype == T.Q8_1:
        assert _core.type_info(int(qtype)) == (qtype.name, *QUANT_SIZES[qtype])
    else:
        with pytest.raises(ValueError, match="ggml_type"):
            _core.type_info(int(qtype))


@pytest.mark.parametrize("qtype", DEQUANT_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks_bit_exact(isa, qtype):
    rng = np.random.default_rng(int(qtype))
    for rows in ROWS:
        for cols in column_counts(qtype):
            data = random_rows(rng, qtype, rows, cols)
            want = quants.dequantize(data, qtype).reshape(rows, cols)
            assert_bits_equal(run_dequantize(data, qtype, cols), want)


@pytest.mark.parametrize("qtype", QUANTIZE_TYPES, ids=lambda t: t.name)
def test_dequantize_quantizer_output_bit_exact(isa, qtype):
    rng = np.random.default_rng(100 + int(qtype))
    for rows in ROWS:
        for cols in column_counts(qtype):
            data = quantized_rows(rng, qtype, rows, cols)
            want = quants.dequantize(data, qtype).reshape(rows, cols)
            assert_bits_equal(run_dequantize(data, qtype, cols), want)


def test_dequantize_float16_specials(isa):
    """Infinities and NaNs of F16 / BF16 survive with their bits (numpy keeps NaN payloads)."""
    halves = np.array([0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x7D55, 0x0001, 0x8001, 0x03FF,
                       0x0400, 0x7BFF, 0x0000, 0x8000] * 5, dtype=np.uint16)
    data = halves.view(np.uint8).reshape(1, -1)
    for qtype in (T.F16, T.BF16):
        want = quants.dequantize(data, qtype).reshape(1, -1)
        assert_bits_equal(run_dequantize(data, qtype, halves.size), want)


def test_dequantize_q8_1(isa):
    """gguf.quants has no Q8_1 decoder; ggml's definition is x = d * q."""
    rng = np.random.default_rng(9)
    data = random_rows(rng, T.Q8_1, 33, 96)
    blocks = data.reshape(-1, 36)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    want = (blocks[:, 4:].view(np.int8).astype(np.float32) * d).reshape(33, 96)
    assert_bits_equal(run_dequantize(data, T.Q8_1, 96), want)


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q8_0, T.Q6_K, T.F16], ids=lambda t: t.name)
def test_dequantize_many_rows_across_threads(isa, qtype):
    rng = np.random.default_rng(7)
    data = random_rows(rng, qtype, 517, 256)
    want = quants.dequantize(data, qtype).reshape(517, 256)
    old = _core.num_threads()
    try:
        for threads in (1, 2, 3):
            _core.set_num_threads(threads)
            assert_bits_equal(run_dequantize(data, qtype, 256), want)
    finally:
        _core.set_num_threads(old)


@pytest.mark.parametrize("qtype", DEQUANT_TYPES, ids=lambda t: t.name)
def test_get_rows_matches_numpy_indexing(isa, qtype):
    rng = np.random.default_rng(50 + int(qtype))
    cols = 256
    data = random_rows(rng, qtype, 40, cols)
    table = quants.dequantize(data, qtype).reshape(40, cols)
    for n_ids in (1, 31, 32, 33, 300):
        ids = rng.integers(0, 40, size=n_ids).astype(np.int32)
        ids[0] = 39  # the last row
        out = np.full((n_ids, cols), np.nan, dtype=np.float32)
        _core.get_rows(data, int(qtype), ids, out)
        assert_bits_equal(out, table[ids])


def test_get_rows_empty_ids():
    data = random_rows(np.random.default_rng(1), T.Q4_0, 4, 64)
    out = np.zeros((0, 64), dtype=np.float32)
    _core.get_rows(data, int(T.Q4_0), np.zeros(0, dtype=np.int32), out)


# ---- bad input: a Python exception naming the argument, never a crash ----

def q4_0_case(rows=4, cols=64):
    data = random_rows(np.random.default_rng(2), T.Q4_0, rows, cols)
    return data, np.zeros((rows, cols), dtype=np.float32)


def test_dequantize_rejects_bad_data():
    data, out = q4_0_case()
    with pytest.raises(ValueError, match="data: expected dtype uint8"):
        _core.dequantize(data.view(np.int8), int(T.Q4_0), out)
    wide = np.zeros((4, 2 * data.shape[1]), dtype=np.uint8)
    wide[:, ::2] = data
    with pytest.raises(ValueError, match="data: expected a C-contiguous"):
        _core.dequantize(wide[:, ::2], int(T.Q4_0), out)
    with pytest.raises(ValueError, match="data: expected rows of 36 bytes"):
        _core.dequantize(data[:, :-1].copy(), int(T.Q4_0), out)
    with pytest.raises(ValueError, match="data: expected 2 dimensions"):
        _core.dequantize(data.reshape(-1), int(T.Q4_0), out)


def test_dequantize_rejects_bad_out():
    data, out = q4_0_case()
    with pytest.raises(ValueError, match="out: expected dtype float32"):
        _core.dequantize(data, int(T.Q4_0), out.astype(np.float64))
    with pytest.raises(ValueError, match="out: expected shape"):
        _core.dequantize(data, int(T.Q4_0), out[:3].copy())
    with pytest.raises(ValueError, match="out: expected a column count that is a multiple of"):
        _core.dequantize(data, int(T.Q4_0), np.zeros((4, 48), dtype=np.float32))
    with pytest.raises(ValueError, match="out: expected a C-contiguous"):
        _core.dequantize(data, int(T.Q4_0), np.zeros((4, 128), dtype=np.float32)[:, ::2])
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writable"):
        _core.dequantize(data, int(T.Q4_0), out)


@pytest.mark.parametrize("bad_type", [4, 5, 16, 99, -1])
def test_dequantize_rejects_unsupported_type(bad_type):
    data, out = q4_0_case()
    with pytest.raises(ValueError, match="ggml_type"):
        _core.dequantize(data, bad_type, out)
    with pytest.raises(ValueError, match="ggml_type"):
        _core.get_rows(data, bad_type, np.zeros(1, np.int32), out[:1])


def test_get_rows_rejects_bad_ids():
    data, _ = q4_0_case()
    out = np.zeros((2, 64), dtype=np.float32)
    for bad in ([0, 4], [-1, 0]):
        with pytest.raises(IndexError, match=r"ids: ids\[\d\] = -?\d+ is outside the table's 4 rows"):
            _core.get_rows(data, int(T.Q4_0), np.array(bad, dtype=np.int32), out)
    with pytest.raises(ValueError, match="ids: expected dtype int32"):
        _core.get_rows(data, int(T.Q4_0), np.array([0, 1], dtype=np.int64), out)
    with pytest.raises(ValueError, match="ids: expected a C-contiguous"):
        _core.get_rows(data, int(T.Q4_0), np.array([0, 9, 1, 9], dtype=np.int32)[::2], out)
    with pytest.raises(ValueError, match="out: expected shape"):
        _core.get_rows(data, int(T.Q4_0), np.array([0], dtype=np.int32), out)
    with pytest.raises(ValueError, match="data: expected rows of"):
        _core.get_rows(data, int(T.Q4_0), np.array([0, 1], dtype=np.int32),
                       np.zeros((2, 96), dtype=np.float32))


# ---- float32 -> F16 / BF16 rounding helpers ----

def float_edge_cases():
    """Every float16 value, the midpoints between neighbours (ties), their float32 neighbours,
    the overflow threshold, float32 subnormals, infinities and NaNs."""
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = np.sort(halves[np.isfinite(halves)].astype(np.float64))
    mids = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    near = np.concatenate([np.nextafter(mids, up), np.nextafter(mids, down)])
    special = np.array([65504, 65519.996, 65520, 1e30, 1e-45, 1e-40, 0.0, -0.0, np.inf, -np.inf],
                       dtype=np.float32)
    return np.concatenate([finite.astype(np.float32), mids, near, special, -special])


def random_float_bits(n):
    bits = np.random.default_rng(3).integers(0, 1 << 32, size=n, dtype=np.uint64)
    return bits.astype(np.uint32).view(np.float32)


def test_float_to_f16_rounds_like_numpy():
    x = np.concatenate([float_edge_cases(), random_float_bits(200_000)])
    out = np.zeros(x.size, dtype=np.uint16)
    _core.float_to_half(x, int(T.F16), out)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = out.view(np.float16)
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()
    np.testing.assert_array_equal(out[~nan], want[~nan].view(np.uint16))


def test_float_to_bf16_matches_gguf():
    x = np.concatenate([float_edge_cases(), random_float_bits(200_000)])
    out = np.zeros(x.size, dtype=np.uint16)
    _core.float_to_half(x, int(T.BF16), out)
    np.testing.assert_array_equal(out, quants.quantize(x, T.BF16).view(np.uint16))


def test_float_to_half_rejects_bad_input():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="ggml_type: expected F16"):
        _core.float_to_half(x, int(T.Q8_0), np.zeros(4, np.uint16))
    with pytest.raises(ValueError, match="x: expected dtype float32"):
        _core.float_to_half(x.astype(np.float64), int(T.F16), np.zeros(4, np.uint16))
    with pytest.raises(ValueError, match="out: expected shape"):
        _core.float_to_half(x, int(T.F16), np.zeros(3, np.uint16))


def test_dequantize_unaligned_rows(isa):
    """Rows at an odd address (a view into a larger buffer) decode the same."""
    rng = np.random.default_rng(11)
    for qtype in DEQUANT_TYPES:
        cols = 256
        data = random_rows(rng, qtype, 3, cols)
        buffer = np.zeros(data.size + 1, dtype=np.uint8)
        shifted = buffer[1:].reshape(data.shape)
        shifted[...] = data
        assert shifted.ctypes.data % 2 == 1
        want = quants.dequantize(data, qtype).reshape(3, cols)
        assert_bits_equal(run_dequantize(shifted, qtype, cols), want)


@pytest.mark.parametrize("qtype", DEQUANT_TYPES, ids=lambda t: t.name)
def test_dequantize_any_bytes(isa, qtype):
    """Fully random bytes: scales may be infinite or NaN (signalling ones included). Every
    non-NaN weight keeps its bits and NaNs stay NaN; which payload a NaN carries when two NaNs
    meet (Q4_1's d * q + m) depends on operand order inside numpy and the compiler, as in ggml."""
    data = np.random.default_rng(200 + int(qtype)).integers(0, 256, size=(33, 768), dtype=np.uint8)
    cols = 768 // QUANT_SIZES[qtype][1] * QUANT_SIZES[qtype][0]
    data = np.ascontiguousarray(data[:, : cols // QUANT_SIZES[qtype][0] * QUANT_SIZES[qtype][1]])
    with np.errstate(invalid="ignore", over="ignore"):
        want = quants.dequantize(data, qtype).reshape(33, cols)
    got = run_dequantize(data, qtype, cols)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    assert_bits_equal(got[~nan], want[~nan])
