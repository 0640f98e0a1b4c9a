// x @ w.T for the few float32 rows of a decode or verify step (daemon/model/linear.py says why): each
// output is one row of w against one row of x, summed in lanes.h's fixed order (products and sums rounded
// apart: no fused multiply-add) whatever the row count or thread count, so a verify's rows get the bits a
// 1-row decode step gets. Two outputs and
// up to four rows a pass over w; the weight stream is prefetched 2 KB ahead (the hardware prefetcher alone
// left one core at 4-7 GB/s where the machine reads 12: w4a8.cpp measured the same).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "lanes.h"

namespace {

using mtpchat::LANES;          // the input width must be a multiple
constexpr int64_t OUTS = 2;    // outputs a pass: the output width must be a multiple
constexpr int64_t CHUNK = 4;   // rows a pass
constexpr int64_t PREFETCH = 2048;

void pass(const float* w, int64_t K, const float* x, int64_t rows, float* y, int64_t ldy) {
  float acc[OUTS][CHUNK][LANES] = {};
  for (int64_t k = 0; k < K; k += LANES) {
    for (int64_t o = 0; o < OUTS; ++o) {
      const float* wk = w + o * K + k;
      __builtin_prefetch(reinterpret_cast<const char*>(wk) + PREFETCH);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < LANES; ++j) acc[o][r][j] += wk[j] * x[r * K + k + j];
    }
  }
  for (int64_t o = 0; o < OUTS; ++o)
    for (int64_t r = 0; r < rows; ++r) y[r * ldy + o] = mtpchat::sum_lanes(acc[o][r]);
}

torch::Tensor f32_mm(const torch::Tensor& x_in, const torch::Tensor& w) {
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat && w.scalar_type() == torch::kFloat && x_in.dim() == 2 &&
                  w.dim() == 2 && w.is_contiguous() && x_in.size(1) == w.size(1) && w.size(1) % LANES == 0 &&
                  w.size(0) % OUTS == 0,
              "f32_mm: float32 rows [R, K] and a contiguous float32 weight [N, K], K a multiple of 16, N of 2");
  const torch::Tensor x = x_in.contiguous();
  const int64_t R = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({R, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N / OUTS, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t r0 = 0; r0 < R; r0 += CHUNK)
        pass(wp + t * OUTS * K, K, xp + r0 * K, std::min(CHUNK, R - r0), yp + r0 * N + t * OUTS, N);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtpchat_cpu, lib) { lib.def("f32_mm(Tensor x, Tensor w) -> Tensor"); }

TORCH_LIBRARY_IMPL(mtpchat_cpu, CPU, lib) { lib.impl("f32_mm", &f32_mm); }
