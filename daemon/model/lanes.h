// The fixed summation order the float32 CPU kernels share (rms_norm.cpp, f32_mm.cpp, decode_attention.cpp):
// a sum runs in 16 lanes (term k in lane k % 16) and the lanes are added pairwise at the end (8 + 8,
// 4 + 4, 2 + 2, 1 + 1), so a result never depends on how many rows or threads computed it.
#pragma once

#include <cstdint>
#include <cstring>

namespace mtpchat {

constexpr int64_t LANES = 16;

// GCC/Clang vector types: one register on AVX-512, two on AVX2, whatever the build targets
typedef float Vec16 __attribute__((vector_size(64)));
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));

inline Vec16 load(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float sum_lanes(Vec16 v) {
  const Vec8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Vec4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

inline float sum_lanes(const float* lanes) { return sum_lanes(load(lanes)); }

}  // namespace mtpchat
