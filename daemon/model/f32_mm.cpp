// x @ w.T for the few float32 rows of a decode or verify step (daemon/model/linear.py says why): each
// output is one row of w against one row of x, summed in lanes.h's fixed order (products and sums rounded
// apart: no fused multiply-add) whatever the row count or thread count, so a verify's rows get the bits a
// 1-row decode step gets.
//
// The weight is the whole cost, so the kernel is built around reading it at the memory's speed. A thread
// splits its outputs into STREAMS runs and a pass takes one output of each: four sequential streams far
// apart, which the hardware prefetchers follow in parallel, plus a software prefetch 2 KB ahead in each.
// One core of an Intel Sapphire Rapids reads 13.7 GB/s as one stream and 15.5-15.9 as four (a C loop
// over 600 MB); the demo's layers went from 9.8 GB/s (two adjacent outputs a pass) to 14.3 at 1 thread
// and from 19 to 25 GB/s at 2 (cold weights, 30 copies of each layer, /tmp driver). Rows come in passes of
// up to four, their accumulators in registers. An AVX2 build (-march=haswell, same core) reads 12.7-13.5
// GB/s for 1 row and 7.4 for 3, where the two-output kernel read 9.6 and 8.2: 16 vector registers hold
// fewer rows' sums.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "cpu_ops.h"
#include "lanes.h"

namespace {

using mtpchat::LANES;  // the input width must be a multiple
using mtpchat::Vec16;
constexpr int64_t STREAMS = 4;  // outputs a pass, one from each of a thread's runs
constexpr int64_t CHUNK = 4;    // rows a pass
constexpr int64_t PREFETCH = 2048;

// y[r][o * ystride] = x[r] . w[o * stride] for r < R, o < O
template <int R, int O>
void pass(const float* w, int64_t stride, int64_t K, const float* x, float* y, int64_t ldy, int64_t ystride) {
  Vec16 acc[O][R] = {};
  for (int64_t k = 0; k < K; k += LANES) {
    Vec16 xk[R];
    for (int r = 0; r < R; ++r) xk[r] = mtpchat::load(x + r * K + k);
    for (int o = 0; o < O; ++o) {
      const float* wk = w + o * stride + k;
      __builtin_prefetch(reinterpret_cast<const char*>(wk) + PREFETCH);
      const Vec16 wo = mtpchat::load(wk);
      for (int r = 0; r < R; ++r) acc[o][r] += wo * xk[r];
    }
  }
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r) y[r * ldy + o * ystride] = mtpchat::sum_lanes(acc[o][r]);
}

// outputs o + s * stride (s < O) of all R rows; rows past the first four reread those w rows from the cache
template <int O>
void outputs(int64_t o, int64_t stride, const float* x, int64_t R, const float* w, int64_t K, float* y,
             int64_t N) {
  const float* wo = w + o * K;
  for (int64_t r0 = 0; r0 < R; r0 += CHUNK) {
    const float* xr = x + r0 * K;
    float* yr = y + r0 * N + o;
    switch (std::min(CHUNK, R - r0)) {
      case 1: pass<1, O>(wo, stride * K, K, xr, yr, N, stride); break;
      case 2: pass<2, O>(wo, stride * K, K, xr, yr, N, stride); break;
      case 3: pass<3, O>(wo, stride * K, K, xr, yr, N, stride); break;
      default: pass<CHUNK, O>(wo, stride * K, K, xr, yr, N, stride);
    }
  }
}

}  // namespace

namespace mtpchat {

// x [..., K] -> [..., N]: the leading dimensions are rows
torch::Tensor f32_mm(const torch::Tensor& x_in, const torch::Tensor& w) {
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat && w.scalar_type() == torch::kFloat && x_in.dim() >= 1 &&
                  w.dim() == 2 && w.is_contiguous() && x_in.size(-1) == w.size(1) && w.size(1) % LANES == 0,
              "f32_mm: float32 rows [..., K] and a contiguous float32 weight [N, K], K a multiple of 16");
  const int64_t K = w.size(1), N = w.size(0);
  const torch::Tensor x = x_in.reshape({-1, K}).contiguous();
  const int64_t R = x.size(0);
  std::vector<int64_t> shape = x_in.sizes().vec();
  shape.back() = N;
  auto y = torch::empty(shape, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    const int64_t run = (end - begin) / STREAMS;  // a pass: outputs i + s * run, s < STREAMS
    for (int64_t i = begin; i < begin + run; ++i) outputs<STREAMS>(i, run, xp, R, wp, K, yp, N);
    for (int64_t o = begin + run * STREAMS; o < end; ++o) outputs<1>(o, 0, xp, R, wp, K, yp, N);
  });
  return y;
}

}  // namespace mtpchat

TORCH_LIBRARY_FRAGMENT(mtpchat_cpu, lib) { lib.def("f32_mm(Tensor x, Tensor w) -> Tensor"); }

TORCH_LIBRARY_IMPL(mtpchat_cpu, CPU, lib) { lib.impl("f32_mm", &mtpchat::f32_mm); }
