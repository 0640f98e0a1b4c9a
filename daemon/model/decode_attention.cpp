// Attention for the few query rows of one sequence's decode or verify step on the CPU, in one call
// (daemon/model/attention.py says why): rotate each row's query and key (rope.py's x·cos + roll(x)·sin,
// products and sum rounded apart: the same bits as those three ops), store its key and value in the
// cache at its position, and attend to every key up to its own. Row t of a call that starts at position
// `first` computes exactly what a 1-row call at first + t computes (each row alone, dot products and the
// softmax sum in lanes.h's fixed order), so a verify's rows get a decode step's bits whatever the thread
// count.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "lanes.h"

namespace {

using mtpchat::LANES;

void rotate(const float* x, const float* cos, const float* sin, int64_t rot, int64_t dim, float* out) {
  const int64_t half = rot / 2;
  for (int64_t i = 0; i < rot; ++i) {
    const float rolled = x[i < half ? i + half : i - half];
    const float a = x[i] * cos[i];
    const float b = rolled * sin[i];
    out[i] = a + b;
  }
  for (int64_t i = rot; i < dim; ++i) out[i] = x[i];
}

float dot(const float* a, const float* b, int64_t n) {
  float lanes[LANES] = {};
  for (int64_t i = 0; i < n; i += LANES)
    for (int64_t j = 0; j < LANES; ++j) lanes[j] += a[i + j] * b[i + j];
  return mtpchat::sum_lanes(lanes);
}

// One query row of one head against keys [0, keys): softmax(q·k / sqrt(dim)) · v into out.
void attend(const float* q, const float* k, const float* v, int64_t keys, int64_t dim, float* scores, float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  float top = -INFINITY;
  for (int64_t j = 0; j < keys; ++j) {
    scores[j] = dot(q, k + j * dim, dim) * scale;
    top = std::max(top, scores[j]);
  }
  float lanes[LANES] = {};
  for (int64_t j = 0; j < keys; ++j) {
    scores[j] = std::exp(scores[j] - top);
    lanes[j % LANES] += scores[j];
  }
  const float total = mtpchat::sum_lanes(lanes);
  for (int64_t i = 0; i < dim; ++i) out[i] = 0.0f;
  for (int64_t j = 0; j < keys; ++j)
    for (int64_t i = 0; i < dim; ++i) out[i] += scores[j] * v[j * dim + i];
  for (int64_t i = 0; i < dim; ++i) out[i] /= total;
}

torch::Tensor attend_rows(const torch::Tensor& query_in, const torch::Tensor& key_in, const torch::Tensor& value_in,
                          const torch::Tensor& cos_in, const torch::Tensor& sin_in, torch::Tensor cache_keys,
                          torch::Tensor cache_values, int64_t first) {
  for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{&query_in, &key_in, &value_in, &cos_in,
                                                                          &sin_in, &cache_keys, &cache_values})
    TORCH_CHECK(t->scalar_type() == torch::kFloat && t->device().is_cpu(), "attend_rows: float32 CPU tensors");
  TORCH_CHECK(query_in.dim() == 3 && key_in.dim() == 3 && value_in.sizes() == key_in.sizes() &&
                  query_in.size(0) == key_in.size(0) && query_in.size(2) == key_in.size(2) &&
                  query_in.size(1) % key_in.size(1) == 0 && key_in.size(2) % LANES == 0,
              "attend_rows: query [T, H, D], key and value [T, Hkv, D], H a multiple of Hkv, D of 16");
  const torch::Tensor query = query_in.contiguous(), key = key_in.contiguous(), value = value_in.contiguous();
  const torch::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  const int64_t T = query.size(0), H = query.size(1), G = key.size(1), D = query.size(2), rot = cos.size(1);
  TORCH_CHECK(cos.dim() == 2 && cos.size(0) == T && sin.sizes() == cos.sizes() && rot <= D && rot % 2 == 0,
              "attend_rows: cos and sin [T, rotary dims], at most D, even");
  TORCH_CHECK(cache_keys.is_contiguous() && cache_values.is_contiguous() && cache_keys.dim() == 4 &&
                  cache_keys.size(0) == 1 && cache_keys.size(1) == G && cache_keys.size(3) == D &&
                  cache_values.sizes() == cache_keys.sizes() && first >= 0 && first + T <= cache_keys.size(2),
              "attend_rows: contiguous caches [1, Hkv, positions, D] holding positions [first, first + T)");
  const int64_t L = cache_keys.size(2);
  const float *qp = query.data_ptr<float>(), *kp = key.data_ptr<float>(), *vp = value.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float *ck = cache_keys.data_ptr<float>(), *cv = cache_values.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t slot = (g * L + first + t) * D, row = (t * G + g) * D;
      rotate(kp + row, cp + t * rot, sp + t * rot, rot, D, ck + slot);
      std::copy(vp + row, vp + row + D, cv + slot);
    }
  auto out = torch::empty({T, H * D}, query.options());
  float* op = out.data_ptr<float>();
  // a task is one row of one head; run them on one thread unless each carries enough keys to share
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / ((first + 1) * D));
  at::parallel_for(0, T * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> q(D), scores(first + T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / H, h = task % H, g = h / (H / G);
      rotate(qp + task * D, cp + t * rot, sp + t * rot, rot, D, q.data());
      attend(q.data(), ck + g * L * D, cv + g * L * D, first + t + 1, D, scores.data(), op + task * D);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtpchat_cpu, lib) {
  lib.def("attend_rows(Tensor query, Tensor key, Tensor value, Tensor cos, Tensor sin, Tensor(a!) cache_keys, "
          "Tensor(b!) cache_values, SymInt first) -> Tensor");
}

TORCH_LIBRARY_IMPL(mtpchat_cpu, CPU, lib) { lib.impl("attend_rows", &attend_rows); }
