// Causal softmax attention with grouped-query heads, forward and backward.
// Legend: B batch, S query positions, Skv key/value positions (Skv >= S; the last S of them
// are the queries' own positions, the rest a cache), Hq query heads, Hkv key/value heads
// (Hq a multiple of Hkv; query head h reads KV head h / (Hq / Hkv)), D head dim.
//   out_i = sum_j softmax_j(scale * q_i . k_j) v_j   over keys lo_i <= j <= i + (Skv - S)
//   lse_i = log sum_j exp(scale * q_i . k_j)        (the same keys; saved for the backward)
// with lo_i = first_key[b,i] (int32 [B,S]; null means 0 everywhere: plain causal attention),
// a per-query lower bound on the keys: pos - window + 1 for a sliding window, a packed sample's
// first position for samples sharing a row. The caller guarantees 0 <= lo_i <= i + (Skv - S).
// Blocked like FlashAttention: scores exist only one tile at a time (memory O(S) per head),
// the forward keeps an online softmax, the backward recomputes probabilities from lse.
// The tile products run on float32 operands (AttentionTiles::f32, every tier) or on operands
// rounded to bfloat16 with float32 accumulation (bf16: vdpbf16ps, the avx512 tier; the other
// tiers run float32 tiles for it). Scores' scaling, masks, softmax and statistics are float32
// either way.
#pragma once

#include <cstdint>

namespace ggtune::ops {

struct AttentionShape {
  int64_t B, S, Skv, Hq, Hkv, D;
};

enum class AttentionTiles { f32, bf16 };

struct AttentionKernels {
  // out_bf16, when not null, also receives the bfloat16 bits of out (the compact copy a training
  // layer keeps), written as each row is finished.
  void (*forward)(const float* q /*[B,S,Hq,D]*/, const float* k /*[B,Skv,Hkv,D]*/,
                  const float* v /*[B,Skv,Hkv,D]*/, float scale, float* out /*[B,S,Hq,D]*/,
                  uint16_t* out_bf16 /*[B,S,Hq,D] or null*/, float* lse /*[B,Hq,S]*/,
                  const int32_t* first_key /*[B,S] or null*/, AttentionTiles tiles,
                  const AttentionShape& s);
  // dq, dk, dv overwritten; dk/dv sum over the query heads sharing a KV head. The forward's
  // out is read as float32 (out) or as bfloat16 bits (out_bf16): exactly one is not null.
  void (*backward)(const float* dout /*[B,S,Hq,D]*/, const float* q, const float* k,
                   const float* v, const float* out /*[B,S,Hq,D] or null*/,
                   const uint16_t* out_bf16 /*[B,S,Hq,D] or null*/, const float* lse /*[B,Hq,S]*/,
                   float scale, float* dq /*[B,S,Hq,D]*/, float* dk /*[B,Skv,Hkv,D]*/,
                   float* dv /*[B,Skv,Hkv,D]*/, const int32_t* first_key /*[B,S] or null*/,
                   AttentionTiles tiles, const AttentionShape& s);
};

const AttentionKernels& attention_kernels();  // the active tier's kernels

// Bytes of scratch the backward allocates for shape s on the active tier (any thread count)
// (memory plans). For even D (every model's head dim) the bf16 tiles' scratch is at most the
// f32 tiles'.
int64_t attention_backward_scratch_bytes(const AttentionShape& s, AttentionTiles tiles);

#if defined(__x86_64__)
extern const AttentionKernels attention_kernels_avx2, attention_kernels_avx512;
#endif

}  // namespace ggtune::ops
