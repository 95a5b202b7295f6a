// The GEMM driver: blocking, packing and the thread split (see gemm.h).
//
// Loop nest of one thread over its output block [m0, m1) x [n0, n1):
//   for jc (nc columns):            B panel kc x nc, packed once (dequantized once)
//     for pc (kc deep):
//       pack B panel
//       for ic (mc rows):           A block mc x kc, kept in L2 (packed once when it fits)
//         for jr (NR columns):      one B strip, kc x NR, stays in L1 ...
//           for ir (MR rows):       ... while the A strips stream past it
//             micro-kernel
#include "gemm/gemm.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "gemm/kernels.h"
#include "gemm/pack.h"
#include "gemm/scratch.h"
#include "parallel.h"

namespace ggtune::gemm {
namespace {

// A is packed once for the whole call when all its blocks fit in this (about L2).
constexpr int64_t kResidentABytes = int64_t(1280) << 10;

// One set of buffers per thread (scratch.h), reused across calls.
struct ThreadBuffers {
  ScratchBuffer a_panel, b_panel, b_scratch;
};

ThreadBuffers& thread_buffers() {
  thread_local ThreadBuffers buffers;
  return buffers;
}

// Everything about a call that does not depend on the thread.
struct Plan {
  int64_t M = 0, N = 0, K = 0;
  FloatView a{};
  const BOperand* b = nullptr;
  OutView c{};
  float alpha = 1.0f, beta = 0.0f;
  const KernelSet* ks = nullptr;
  MicroKernel kernel = nullptr;
  PackFormat format = PackFormat::f32;
  int64_t kc = 0, mc = 0, nc = 0;  // block sizes (kc respects the operand's K alignment)
  int64_t n_unit = 0;              // output columns are split in multiples of this
  const TileEpilogue* epilogue = nullptr;
};

PanelLayout layout(const Plan& p, int64_t width, int64_t kc) {
  const int64_t g = p.format == PackFormat::bf16_pairs ? 2 : 1;
  return {p.format, width, round_up(kc, g)};
}

Plan make_plan(int64_t M, int64_t N, int64_t K, FloatView a, const BOperand& b, OutView c,
               float alpha, float beta, Precision precision) {
  Plan p;
  p.M = M, p.N = N, p.K = K, p.a = a, p.b = &b, p.c = c, p.alpha = alpha, p.beta = beta;
  p.ks = &active_kernels();
  const bool native_bf16 = precision == Precision::bf16 && p.ks->bf16 != nullptr;
  p.kernel = native_bf16 ? p.ks->bf16 : p.ks->f32;
  p.format = native_bf16                      ? PackFormat::bf16_pairs
             : precision == Precision::bf16 ? PackFormat::f32_as_bf16
                                              : PackFormat::f32;
  const Blocking& blk = native_bf16 ? p.ks->bf16_blocking : p.ks->f32_blocking;
  // Equal K blocks (rounded to the alignment) rather than full blocks and a thin rest.
  const int64_t k_align = std::lcm<int64_t>(b.k_align(), native_bf16 ? 2 : 1);
  const int64_t k_blocks = (K + blk.kc - 1) / blk.kc;
  p.kc = std::min(K, round_up((K + k_blocks - 1) / k_blocks, k_align));
  p.mc = blk.mc;
  p.n_unit = std::lcm<int64_t>(p.ks->nr, b.n_align());
  p.nc = round_up(blk.nc, p.n_unit);
  return p;
}

// Stores an MR x NR tile computed into `tile` (row stride NR) through an arbitrary view.
void store_strided(const float* tile, int64_t nr, OutView c, int64_t m, int64_t n, float alpha,
                   float beta) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float& out = c.p[i * c.rs + j * c.cs];
      out = beta == 0.0f ? alpha * tile[i * nr + j] : alpha * tile[i * nr + j] + beta * out;
    }
}

void pack_b_panel(const Plan& p, int64_t k0, int64_t kc, int64_t n0, int64_t nc, void* panel,
                  ThreadBuffers& buf) {
  const PanelLayout lay = layout(p, p.ks->nr, kc);
  zero_panel_padding(lay, kc, nc, panel);
  int64_t tile_k, tile_n;
  p.b->tile_shape(kc, nc, p.ks->nr, &tile_k, &tile_n);
  float* scratch =
      static_cast<float*>(buf.b_scratch.get(4 * p.b->scratch_floats(tile_k, tile_n)));
  for (int64_t k = 0; k < kc; k += tile_k)
    for (int64_t j = 0; j < nc; j += tile_n) {
      const int64_t tk = std::min(tile_k, kc - k), tn = std::min(tile_n, nc - j);
      pack_tile(lay, p.b->view(k0 + k, tk, n0 + j, tn, scratch), tk, tn, k, j, panel);
    }
}

void pack_a_block(const Plan& p, int64_t m0, int64_t mc, int64_t k0, int64_t kc, void* panel) {
  const PanelLayout lay = layout(p, p.ks->mr, kc);
  zero_panel_padding(lay, kc, mc, panel);
  // The panel indexes A by (k, row): a transposed view of A.
  pack_tile(lay, p.a.offset(m0, k0).transposed(), kc, mc, 0, 0, panel);
}

// One MR x NR tile: straight into C when it is row-major, else through a buffer.
void tile_product(const Plan& p, int64_t kcp, const void* a_strip, const void* b_strip,
                  int64_t m, int64_t n, int64_t row, int64_t col, float beta) {
  const OutView& c = p.c;
  float* out = c.p + row * c.rs + col * c.cs;
  if (c.cs == 1) {
    p.kernel(kcp, a_strip, b_strip, out, c.rs, int(m), int(n), p.alpha, beta);
    return;
  }
  alignas(64) float tile[kMaxTileElems];
  p.kernel(kcp, a_strip, b_strip, tile, p.ks->nr, int(m), int(n), 1.0f, 0.0f);
  store_strided(tile, p.ks->nr, {out, c.rs, c.cs}, m, n, p.alpha, beta);
}

void run_block(const Plan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  ThreadBuffers& buf = thread_buffers();
  const int64_t mr = p.ks->mr, nr = p.ks->nr;
  const int64_t g = p.format == PackFormat::bf16_pairs ? 2 : 1;
  const int64_t eb = p.format == PackFormat::bf16_pairs ? 2 : 4;
  const int64_t kcp_max = round_up(p.kc, g);
  const int64_t mc = std::min(p.mc, round_up(m1 - m0, mr));
  const int64_t nc = std::min(p.nc, round_up(n1 - n0, nr));
  const int64_t ic_blocks = (m1 - m0 + mc - 1) / mc, pc_blocks = (p.K + p.kc - 1) / p.kc;
  const int64_t a_block_bytes = round_up(mc, mr) * kcp_max * eb;
  const bool a_resident = ic_blocks * pc_blocks * a_block_bytes <= kResidentABytes;
  auto* a_panels = static_cast<char*>(
      buf.a_panel.get(a_resident ? ic_blocks * pc_blocks * a_block_bytes : a_block_bytes));
  void* b_panel = buf.b_panel.get(round_up(nc, nr) * kcp_max * eb);
  std::vector<char> a_ready(a_resident ? ic_blocks * pc_blocks : 0, 0);
  int64_t a_current = -1;  // the block a non-resident A buffer holds

  for (int64_t jc = n0; jc < n1; jc += nc) {
    const int64_t ncur = std::min(nc, n1 - jc);
    for (int64_t pc = 0, pi = 0; pc < p.K; pc += p.kc, ++pi) {
      const int64_t kcur = std::min(p.kc, p.K - pc), kcp = round_up(kcur, g);
      pack_b_panel(p, pc, kcur, jc, ncur, b_panel, buf);
      const float beta = pc == 0 ? p.beta : 1.0f;
      const TileEpilogue* epilogue = pc + kcur >= p.K ? p.epilogue : nullptr;  // last panel only
      for (int64_t ic = m0, ii = 0; ic < m1; ic += mc, ++ii) {
        const int64_t mcur = std::min(mc, m1 - ic);
        const int64_t block = ii * pc_blocks + pi;
        char* a_panel = a_panels + (a_resident ? block * a_block_bytes : 0);
        if (a_resident ? !a_ready[block] : a_current != block) {
          pack_a_block(p, ic, mcur, pc, kcur, a_panel);
          if (a_resident) a_ready[block] = 1;
          a_current = block;
        }
        for (int64_t jr = 0; jr < ncur; jr += nr) {
          const char* b_strip = static_cast<const char*>(b_panel) + jr * kcp * eb;
          for (int64_t ir = 0; ir < mcur; ir += mr) {
            const int64_t m = std::min(mr, mcur - ir), n = std::min(nr, ncur - jr);
            const int64_t row = ic + ir, col = jc + jr;
            tile_product(p, kcp, a_panel + ir * kcp * eb, b_strip, m, n, row, col, beta);
            if (epilogue) (*epilogue)(p.c.p + row * p.c.rs + col, p.c.rs, row, col, m, n);
          }
        }
      }
    }
  }
}

// Splits the output among threads along the axis whose split packs less twice: along N
// every thread packs all of A, along M every thread packs (dequantizes) all of B.
void run_parallel(const Plan& p) {
  const int64_t threads = num_threads();
  const int64_t n_units = (p.N + p.n_unit - 1) / p.n_unit;
  const int64_t m_units = (p.M + p.ks->mr - 1) / p.ks->mr;
  const double dup_a = double(p.M), dup_b = double(p.N) * p.b->pack_cost();
  bool split_n = dup_a <= dup_b;
  if (split_n && n_units < threads && m_units >= threads) split_n = false;
  if (!split_n && m_units < threads && n_units >= threads) split_n = true;
  if (split_n) {
    parallel_for(n_units, 1, [&](int64_t u0, int64_t u1) {
      run_block(p, 0, p.M, u0 * p.n_unit, std::min(p.N, u1 * p.n_unit));
    });
  } else {
    parallel_for(m_units, 1, [&](int64_t u0, int64_t u1) {
      run_block(p, u0 * p.ks->mr, std::min(p.M, u1 * p.ks->mr), 0, p.N);
    });
  }
}

void scale_output(int64_t M, int64_t N, OutView c, float beta) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      float& out = c.p[i * c.rs + j * c.cs];
      out = beta == 0.0f ? 0.0f : beta * out;
    }
}

}  // namespace

void run(int64_t M, int64_t N, int64_t K, FloatView a, const BOperand& b, OutView c, float alpha,
         float beta, Precision precision, const TileEpilogue* epilogue) {
  if (precision == Precision::int8) throw std::invalid_argument("gemm::run: int8 goes to run_q8");
  if (epilogue && c.cs != 1) throw std::invalid_argument("gemm::run: an epilogue needs c.cs == 1");
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    scale_output(M, N, c, beta);
    if (epilogue) (*epilogue)(c.p, c.rs, 0, 0, M, N);
    return;
  }
  Plan p = make_plan(M, N, K, a, b, c, alpha, beta, precision);
  p.epilogue = epilogue;
  run_parallel(p);
}

void gemm_f32(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, bool trans_a,
              const float* b, int64_t ldb, bool trans_b, float* out, int64_t ldc, float alpha,
              float beta) {
  const FloatView op_a = trans_a ? FloatView{a, 1, lda} : FloatView{a, lda, 1};
  const FloatView op_b = trans_b ? FloatView{b, 1, ldb} : FloatView{b, ldb, 1};
  // A narrow output (a LoRA rank as N) would waste most of each NR-wide strip: compute
  // out^T = op(b)^T @ op(a)^T instead, so the narrow side runs as the kernel's rows.
  if (N < active_kernels().nr && N < M) {
    const FloatB bt(op_a.transposed());
    run(N, M, K, op_b.transposed(), bt, {out, 1, ldc}, alpha, beta, Precision::f32);
    return;
  }
  const FloatB bop(op_b);
  run(M, N, K, op_a, bop, {out, ldc, 1}, alpha, beta, Precision::f32);
}

}  // namespace ggtune::gemm
