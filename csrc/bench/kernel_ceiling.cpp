// The int8 engine's ceilings (peaks.h): its micro-kernels on operands that stay in L1.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "bench/peaks.h"
#include "dispatch.h"
#include "gemm/qgemm.h"

namespace ggtune::bench {
namespace {

constexpr int64_t kDepth = 576;  // SmolLM2's n_embd: 18 blocks, 9 block pairs

// One thread's operands: MR rows of A and one B strip (23 KB with its scales), filled with
// codes and scales of ordinary size (the instructions' speed does not depend on them).
struct Tile {
  int64_t blocks = gemm::q_blocks(kDepth);
  std::vector<int8_t> a;
  std::vector<float> ad, offset_scale, c;
  std::vector<int32_t> ints;
  std::vector<uint8_t> strip;

  explicit Tile(int mr)
      : a(mr * kDepth), ad(mr * blocks, 0.01f), offset_scale(mr, 1e-4f), c(mr * gemm::kQNr),
        ints(mr * blocks, 1 << 17), strip(gemm::q_strip_bytes(blocks) + 64) {
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = int8_t(int(i % 15) - 7);
    uint8_t* b = aligned();
    for (int64_t i = 0; i < gemm::q_strip_bytes(blocks); ++i) b[i] = uint8_t(i % 13);
    for (int64_t blk = 0; blk <= blocks; ++blk) {  // d, and the tail's offset scales: floats
      auto* f = reinterpret_cast<float*>(blk < blocks ? b + blk * gemm::kQBlockBytes + gemm::kQCodeBytes
                                                      : b + blocks * gemm::kQBlockBytes);
      for (int j = 0; j < gemm::kQNr; ++j) f[j] = 0.01f;
    }
  }
  // The kernels load B with aligned 64-byte loads.
  uint8_t* aligned() {
    auto p = reinterpret_cast<uintptr_t>(strip.data());
    return reinterpret_cast<uint8_t*>((p + 63) / 64 * 64);
  }
};

}  // namespace

int64_t kernel_loop(PeakKind kind, int64_t iterations) {
  if (active_isa() != Isa::avx512) return 0;
  const gemm::QKernelSet& set = gemm::active_q_kernels();
  const gemm::QMicroKernel kernel = kind == PeakKind::int8_affine      ? set.affine
                                     : kind == PeakKind::int8_symmetric ? set.symmetric
                                                                        : set.column_scaled;
  thread_local Tile tile(set.mr);
  const uint8_t* b = tile.aligned();
  for (int64_t it = 0; it < iterations; ++it)
    kernel(tile.blocks, tile.a.data(), kDepth, tile.ad.data(), tile.ints.data(),
           tile.offset_scale.data(), tile.blocks, b, tile.c.data(), gemm::kQNr, set.mr, gemm::kQNr,
           false, nullptr);
  return iterations * 2 * set.mr * gemm::kQNr * kDepth;
}

}  // namespace ggtune::bench
