// Layer-sized calls for the few rows of a decode or verify step on the CPU, composed of this project's
// kernels: the ops a layer's modules run, in their order, through the same kernels and ATen ops, so the
// same bits and the same cache writes, without the Python-level calls between them.
//
// mlp_rows is the dense SwiGLU MLP where both products take the float32 kernel (daemon/model/mlp.py).
// decode_layer is a whole full-attention layer with a dense MLP, each of its four products float32 or
// int4 (daemon/model/text_model.py says when it is taken and why): Llama's layers, Qwen3's (plain q/k
// norms) and Qwen3.5/3.6's gated ones (zero-centred q/k norms, the output gated by sigmoid) all fit;
// every norm of a model shares its offset and eps.
#include <torch/extension.h>

#include "cpu_ops.h"

namespace {

// One layer's weight: a float32 w [N, K] alone (f32_mm), or int4 group-32 codes with their d and m, whole
// tiles (q4_mm, as daemon/model/w4a8.py's layers call it). The op takes them as optional tensors, not as
// lists: four lists cost about 2 µs more a call to pass from Python (warm caches, a /tmp driver).
struct Weight {
  const torch::Tensor& w;
  const std::optional<torch::Tensor>& d;
  const std::optional<torch::Tensor>& m;
};

// x [..., K] times a weight -> [..., N]
torch::Tensor product(const torch::Tensor& x, const Weight& weight) {
  TORCH_CHECK(weight.d.has_value() == weight.m.has_value(),
              "decode_layer: a product's weight is a float32 w, or int4 codes with d and m");
  if (!weight.d) return mtpchat::f32_mm(x, weight.w);
  const torch::Tensor out = mtpchat::q4_mm(x.reshape({-1, x.size(-1)}), weight.w, *weight.d, *weight.m,
                                           weight.w.size(0), true);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out.size(1);
  return out.view(shape);
}

// down(silu(gate) * up), gate_up = [gate | up] stacked
torch::Tensor mlp(const torch::Tensor& x, const Weight& gate_up, const Weight& down) {
  const torch::Tensor h = product(x, gate_up);
  const int64_t I = h.size(-1) / 2;
  return product(at::silu(h.narrow(-1, 0, I)).mul_(h.narrow(-1, I, I)), down);
}

torch::Tensor mlp_rows(const torch::Tensor& x, const torch::Tensor& gate_up, const torch::Tensor& down) {
  TORCH_CHECK(gate_up.size(0) == 2 * down.size(1), "mlp_rows: gate_up [2I, H] and down [H, I]");
  const std::optional<torch::Tensor> none;
  return mlp(x, {gate_up, none, none}, {down, none, none});
}

torch::Tensor decode_layer(const torch::Tensor& x, const torch::Tensor& input_norm, const torch::Tensor& qkv,
                           const std::optional<torch::Tensor>& qkv_d, const std::optional<torch::Tensor>& qkv_m,
                           const std::optional<torch::Tensor>& q_norm, const std::optional<torch::Tensor>& k_norm,
                           const torch::Tensor& o, const std::optional<torch::Tensor>& o_d,
                           const std::optional<torch::Tensor>& o_m, const torch::Tensor& post_norm,
                           const torch::Tensor& gate_up, const std::optional<torch::Tensor>& gate_up_d,
                           const std::optional<torch::Tensor>& gate_up_m, const torch::Tensor& down,
                           const std::optional<torch::Tensor>& down_d, const std::optional<torch::Tensor>& down_m,
                           const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor cache_keys,
                           torch::Tensor cache_values, int64_t first, int64_t heads, bool gated, double offset,
                           double eps) {
  TORCH_CHECK(x.dim() == 3 && x.size(0) == 1 && cache_keys.dim() == 4 && q_norm.has_value() == k_norm.has_value(),
              "decode_layer: one sequence's rows [1, T, hidden], caches [1, Hkv, positions, D], both q/k norms "
              "or neither");
  const int64_t T = x.size(1), kv_heads = cache_keys.size(1), D = cache_keys.size(3);
  const int64_t query_rows = heads * D * (gated ? 2 : 1), kv_rows = kv_heads * D;
  const torch::Tensor rows = product(mtpchat::rms_norm(x, input_norm, offset, eps), {qkv, qkv_d, qkv_m});
  TORCH_CHECK(rows.size(-1) == query_rows + 2 * kv_rows,
              "decode_layer: qkv_proj's rows are the query (and gate) heads', then the key and value heads'");
  const auto parts = rows.split_with_sizes({query_rows, kv_rows, kv_rows}, -1);
  torch::Tensor query = parts[0].view({1, T, heads, -1}), gate;
  if (gated) {
    const auto halves = query.chunk(2, -1);
    query = halves[0];
    gate = halves[1];
  }
  torch::Tensor key = parts[1].view({1, T, kv_heads, D});
  if (q_norm) {
    query = mtpchat::rms_norm(query, *q_norm, offset, eps);
    key = mtpchat::rms_norm(key, *k_norm, offset, eps);
  }
  torch::Tensor out = mtpchat::attend_rows(query, key, parts[2].view({1, T, kv_heads, D}), cos, sin, cache_keys,
                                           cache_values, first);
  if (gated) out = out * at::sigmoid(gate.reshape({1, T, -1}));
  const torch::Tensor h = x + product(out, {o, o_d, o_m});
  return h + mlp(mtpchat::rms_norm(h, post_norm, offset, eps), {gate_up, gate_up_d, gate_up_m},
                 {down, down_d, down_m});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtpchat_cpu, lib) {
  lib.def("mlp_rows(Tensor x, Tensor gate_up, Tensor down) -> Tensor");
  // each product's weight as a float32 w, or int4 codes with their d and m (Weight above)
  lib.def("decode_layer(Tensor x, Tensor input_norm, Tensor qkv, Tensor? qkv_d, Tensor? qkv_m, Tensor? q_norm, "
          "Tensor? k_norm, Tensor o, Tensor? o_d, Tensor? o_m, Tensor post_norm, Tensor gate_up, Tensor? gate_up_d, "
          "Tensor? gate_up_m, Tensor down, Tensor? down_d, Tensor? down_m, Tensor cos, Tensor sin, "
          "Tensor(a!) cache_keys, Tensor(b!) cache_values, SymInt first, int heads, bool gated, float offset, "
          "float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(mtpchat_cpu, CPU, lib) {
  lib.impl("mlp_rows", &mlp_rows);
  lib.impl("decode_layer", &decode_layer);
}
