// Dequantization must round exactly as gguf.quants (numpy, float32): `d * q + m` is two
// roundings. GCC fuses such expressions into one FMA by default when the target has FMA,
// intrinsics included, so the translation units that dequantize switch contraction off.
// Include this after the other headers.
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
