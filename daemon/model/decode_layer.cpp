// One full-attention decoder layer with a dense MLP, for the few float32 rows of one sequence's decode or
// verify step on the CPU, in one call (daemon/model/text_model.py says when it is taken and why): the
// ops the layer's modules run, in their order, through the same kernels and ATen ops, so the same bits
// and the same cache writes. Llama's layers, Qwen3's (plain q/k norms) and Qwen3.5/3.6's gated ones
// (zero-centred q/k norms, the output gated by sigmoid) all fit; every norm of a model shares its offset
// and eps.
#include <torch/extension.h>

#include "cpu_ops.h"

namespace {

torch::Tensor decode_layer(const torch::Tensor& x, const torch::Tensor& input_norm, const torch::Tensor& qkv_proj,
                           const std::optional<torch::Tensor>& q_norm, const std::optional<torch::Tensor>& k_norm,
                           const torch::Tensor& o_proj, const torch::Tensor& post_norm, const torch::Tensor& gate_up,
                           const torch::Tensor& down, const torch::Tensor& cos, const torch::Tensor& sin,
                           torch::Tensor cache_keys, torch::Tensor cache_values, int64_t first, int64_t heads,
                           bool gated, double offset, double eps) {
  TORCH_CHECK(x.dim() == 3 && x.size(0) == 1 && cache_keys.dim() == 4 && q_norm.has_value() == k_norm.has_value(),
              "decode_layer: one sequence's rows [1, T, hidden], caches [1, Hkv, positions, D], both q/k norms "
              "or neither");
  const int64_t T = x.size(1), kv_heads = cache_keys.size(1), D = cache_keys.size(3);
  const int64_t query_rows = heads * D * (gated ? 2 : 1), kv_rows = kv_heads * D;
  TORCH_CHECK(qkv_proj.size(0) == query_rows + 2 * kv_rows,
              "decode_layer: qkv_proj's rows are the query (and gate) heads', then the key and value heads'");
  const auto qkv = mtpchat::f32_mm(mtpchat::rms_norm(x, input_norm, offset, eps), qkv_proj)
                       .split_with_sizes({query_rows, kv_rows, kv_rows}, -1);
  torch::Tensor query = qkv[0].view({1, T, heads, -1}), gate;
  if (gated) {
    const auto halves = query.chunk(2, -1);
    query = halves[0];
    gate = halves[1];
  }
  torch::Tensor key = qkv[1].view({1, T, kv_heads, D});
  if (q_norm) {
    query = mtpchat::rms_norm(query, *q_norm, offset, eps);
    key = mtpchat::rms_norm(key, *k_norm, offset, eps);
  }
  torch::Tensor out = mtpchat::attend_rows(query, key, qkv[2].view({1, T, kv_heads, D}), cos, sin, cache_keys,
                                           cache_values, first);
  if (gated) out = out * at::sigmoid(gate.reshape({1, T, -1}));
  const torch::Tensor h = x + mtpchat::f32_mm(out, o_proj);
  return h + mtpchat::mlp_rows(mtpchat::rms_norm(h, post_norm, offset, eps), gate_up, down);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtpchat_cpu, lib) {
  lib.def("decode_layer(Tensor x, Tensor input_norm, Tensor qkv_proj, Tensor? q_norm, Tensor? k_norm, "
          "Tensor o_proj, Tensor post_norm, Tensor gate_up, Tensor down, Tensor cos, Tensor sin, "
          "Tensor(a!) cache_keys, Tensor(b!) cache_values, SymInt first, int heads, bool gated, float offset, "
          "float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(mtpchat_cpu, CPU, lib) { lib.impl("decode_layer", &decode_layer); }
