// RMSNorm of float32 rows in one call, for the CPU decode path (daemon/model/norms.py says why):
// y = x * (1 / sqrt(mean(x^2) + eps)) * (offset + w), the sum of squares in lanes.h's fixed order, so a
// row's result does not depend on the rows normalised with it.
#include <torch/extension.h>

#include <cmath>

#include "cpu_ops.h"
#include "lanes.h"

namespace {

using mtpchat::LANES;

float sum_of_squares(const float* x, int64_t n) {
  float lanes[LANES] = {};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int64_t j = 0; j < LANES; ++j) lanes[j] += x[i + j] * x[i + j];
  for (; i < n; ++i) lanes[i % LANES] += x[i] * x[i];
  return mtpchat::sum_lanes(lanes);
}

}  // namespace

namespace mtpchat {

torch::Tensor rms_norm(const torch::Tensor& x_in, const torch::Tensor& weight, double offset, double eps) {
  TORCH_CHECK(x_in.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat &&
                  weight.is_contiguous() && x_in.size(-1) == weight.numel(),
              "rms_norm: float32 rows and a contiguous float32 weight of their width");
  const torch::Tensor x = x_in.contiguous();
  const int64_t width = weight.numel(), rows = x.numel() / width;
  auto y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float off = static_cast<float>(offset), e = static_cast<float>(eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = xp + r * width;
    const float inv = 1.f / std::sqrt(sum_of_squares(row, width) / static_cast<float>(width) + e);
    for (int64_t i = 0; i < width; ++i) yp[r * width + i] = row[i] * inv * (off + wp[i]);
  }
  return y;
}

}  // namespace mtpchat

TORCH_LIBRARY_FRAGMENT(mtpchat_cpu, lib) { lib.def("rms_norm(Tensor x, Tensor weight, float offset, float eps) -> Tensor"); }

TORCH_LIBRARY_IMPL(mtpchat_cpu, CPU, lib) { lib.impl("rms_norm", &mtpchat::rms_norm); }
