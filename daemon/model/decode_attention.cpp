// Attention for the few query rows of one sequence's decode or verify step on the CPU, in one call
// (daemon/model/attention.py says why): rotate each row's query and key (rope.py's x·cos + roll(x)·sin,
// products and sum rounded apart: the same bits as those three ops), store its key and value in the
// cache at its position, and attend to every key up to its own. Row t of a call that starts at position
// `first` computes exactly what a 1-row call at first + t computes (each row alone, dot products and the
// softmax sum in lanes.h's fixed order, the weighted sum of values in key order), so a verify's rows get
// a decode step's bits whatever the thread count. The query heads that share a key head go together, so
// each key row is read once for the group.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_ops.h"
#include "lanes.h"

namespace {

using mtpchat::LANES;
using mtpchat::load;
using mtpchat::sum_lanes;
using mtpchat::Vec16;

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
  Vec16 lanes = {};
  for (int64_t i = 0; i < n; i += LANES) lanes += load(a + i) * load(b + i);
  return sum_lanes(lanes);
}

// e^x for x <= 0, within 3 ulp: x = n·ln 2 + r (ln 2 in two parts, Cody and Waite), a degree-7 Taylor
// polynomial for e^r on |r| <= ln 2 / 2, times 2^n built in the exponent bits. Plain arithmetic, so the
// compiler vectorizes the loop that calls it (std::exp is a call per element).
float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);  // e^-87 is a normal float's order; below it the weight is 0 to float precision
  const float magic = 12582912.0f;  // 1.5 · 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040;
  for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = p * r + c;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// out[0, 16·C) = Σ_j weights[j] · rows[j][0, 16·C), j in order, C registers at once (one would wait on
// each add in turn)
template <int C>
void weighted_sum(const float* weights, const float* rows, int64_t count, int64_t stride, float* out) {
  Vec16 acc[C] = {};
  for (int64_t j = 0; j < count; ++j)
    for (int c = 0; c < C; ++c) acc[c] += weights[j] * load(rows + j * stride + c * LANES);
  std::memcpy(out, acc, sizeof acc);
}

// One query row of the `group` heads that share a key head, against keys [0, keys): for each head,
// softmax(q·k / sqrt(dim)) · v into out. Each key row is read once for the whole group.
void attend(const float* q, int64_t group, const float* k, const float* v, int64_t keys, int64_t dim,
            float* scores, float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  for (int64_t j = 0; j < keys; ++j)
    for (int64_t h = 0; h < group; ++h) scores[h * keys + j] = dot(q + h * dim, k + j * dim, dim) * scale;
  for (int64_t h = 0; h < group; ++h) {
    float* s = scores + h * keys;
    float top = -INFINITY;
    for (int64_t j = 0; j < keys; ++j) top = std::max(top, s[j]);
    for (int64_t j = 0; j < keys; ++j) s[j] = exp_nonpositive(s[j] - top);
    Vec16 lanes = {};  // term j in lane j % 16, as lanes.h sums
    int64_t j = 0;
    for (; j + LANES <= keys; j += LANES) lanes += load(s + j);
    for (; j < keys; ++j) lanes[j % LANES] += s[j];
    const float total = sum_lanes(lanes);
    for (j = 0; j < keys; ++j) s[j] /= total;
    for (int64_t i = 0; i < dim;) {
      if (dim - i >= 4 * LANES) {
        weighted_sum<4>(s, v + i, keys, dim, out + h * dim + i);
        i += 4 * LANES;
      } else {
        weighted_sum<1>(s, v + i, keys, dim, out + h * dim + i);
        i += LANES;
      }
    }
  }
}

}  // namespace

namespace mtpchat {

torch::Tensor attend_rows(const torch::Tensor& query_in, const torch::Tensor& key_in, const torch::Tensor& value_in,
                          const torch::Tensor& cos_in, const torch::Tensor& sin_in, torch::Tensor cache_keys,
                          torch::Tensor cache_values, int64_t first) {
  for (const torch::Tensor* t : std::initializer_list<const torch::Tensor*>{&query_in, &key_in, &value_in, &cos_in,
                                                                          &sin_in, &cache_keys, &cache_values})
    TORCH_CHECK(t->scalar_type() == torch::kFloat && t->device().is_cpu(), "attend_rows: float32 CPU tensors");
  // the layer's [1, T, ...] (one sequence) as they come, so no Python-level op drops or restores the batch
  const bool batch = query_in.dim() == 4 && query_in.size(0) == 1;
  const int64_t lead = batch ? 1 : 0;
  TORCH_CHECK(query_in.dim() == 3 + lead && key_in.dim() == 3 + lead && value_in.sizes() == key_in.sizes() &&
                  (!batch || key_in.size(0) == 1) && query_in.size(lead) == key_in.size(lead) &&
                  query_in.size(-1) == key_in.size(-1) && query_in.size(-2) % key_in.size(-2) == 0 &&
                  key_in.size(-1) % LANES == 0,
              "attend_rows: query [(1,) T, H, D], key and value [(1,) T, Hkv, D], H a multiple of Hkv, D of 16");
  const torch::Tensor query = (batch ? query_in[0] : query_in).contiguous();
  const torch::Tensor key = (batch ? key_in[0] : key_in).contiguous();
  const torch::Tensor value = (batch ? value_in[0] : value_in).contiguous();
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
  // a task is one row of one key head's group of query heads; one thread runs them unless each carries
  // enough keys to share
  const int64_t group = H / G, grain = std::max<int64_t>(1, (1 << 18) / ((first + 1) * D * group));
  at::parallel_for(0, T * G, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> q(group * D), scores(group * (first + T));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / G, g = task % G;
      for (int64_t h = 0; h < group; ++h)
        rotate(qp + (t * H + g * group + h) * D, cp + t * rot, sp + t * rot, rot, D, q.data() + h * D);
      attend(q.data(), group, ck + g * L * D, cv + g * L * D, first + t + 1, D, scores.data(),
             op + (t * H + g * group) * D);
    }
  });
  return batch ? out.unsqueeze(0) : out;
}

}  // namespace mtpchat

TORCH_LIBRARY_FRAGMENT(mtpchat_cpu, lib) {
  lib.def("attend_rows(Tensor query, Tensor key, Tensor value, Tensor cos, Tensor sin, Tensor(a!) cache_keys, "
          "Tensor(b!) cache_values, SymInt first) -> Tensor");
}

TORCH_LIBRARY_IMPL(mtpchat_cpu, CPU, lib) { lib.impl("attend_rows", &mtpchat::attend_rows); }
