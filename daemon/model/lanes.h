// The fixed summation order the float32 CPU kernels share (rms_norm.cpp, f32_mm.cpp, and decode_attention.cpp,
// which keeps the lanes in a register): a sum runs in 16 lanes (term k in lane k % 16) and the lanes are
// added pairwise at the end (8 + 8, 4 + 4, 2 + 2, 1 + 1), so a result never depends on how many rows or
// threads computed it.
#pragma once

#include <cstdint>

namespace mtpchat {

constexpr int64_t LANES = 16;

inline float sum_lanes(float* lanes) {
  for (int64_t width = LANES / 2; width > 0; width /= 2)
    for (int64_t j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  return lanes[0];
}

}  // namespace mtpchat
