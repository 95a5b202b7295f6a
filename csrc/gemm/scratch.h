// Small helpers both GEMM engines (gemm.cpp, qgemm.cpp) use for their per-thread buffers.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>

namespace ggtune::gemm {

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// A grow-only, 64-byte aligned buffer, reused across calls (one per thread and purpose).
class ScratchBuffer {
 public:
  void* get(int64_t bytes) {
    if (bytes > size_) {
      ptr_.reset(static_cast<char*>(std::aligned_alloc(64, round_up(bytes, 64))));
      size_ = bytes;
    }
    return ptr_.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> ptr_;
  int64_t size_ = 0;
};

}  // namespace ggtune::gemm
