// The decode-path kernels one source calls from another (decode_layer.cpp runs a layer's worth of them in
// one call): each is also an op of its own, defined and documented in its source.
#pragma once

#include <torch/extension.h>

namespace mtpchat {

torch::Tensor f32_mm(const torch::Tensor& x, const torch::Tensor& w);  // f32_mm.cpp
torch::Tensor q4_mm(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& d,
                    const torch::Tensor& m, int64_t tiles, bool simd);  // w4a8.cpp
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double offset, double eps);  // rms_norm.cpp
torch::Tensor attend_rows(const torch::Tensor& query, const torch::Tensor& key, const torch::Tensor& value,
                          const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor cache_keys,
                          torch::Tensor cache_values, int64_t first);  // decode_attention.cpp

}  // namespace mtpchat
