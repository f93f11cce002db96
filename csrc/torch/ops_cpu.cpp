// The CPU implementations of the bitmaps ops (TORCH_LIBRARY_IMPL(bitmaps, CPU)): argument checks
// with messages users can act on, then the torch-free kernels of csrc/kernels spread over
// at::parallel_for, which honours torch.get_num_threads().
//
// Contiguity: the float activations x are made contiguous here (a copy when they are not); the
// packed int32 operands, w_scale and bias must already be contiguous (a strided packed matrix is
// almost always a bug, e.g. a transposed weight), and the error says so.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu_dispatch.h"
#include "kernels/bit_layout.h"
#include "kernels/cpu_attention.h"
#include "kernels/cpu_embed.h"
#include "kernels/cpu_binary_linear.h"
#include "kernels/cpu_kernels.h"
#include "kernels/cpu_layer_norm.h"

namespace bitmaps {
namespace {

using cpu::CpuPath;

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "bitmaps::", op, ": ", name,
              " must be a CPU tensor like the other inputs of this CPU kernel, got device ",
              t.device());
}

void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "bitmaps::", op, ": ", name,
              " must be contiguous (call .contiguous() on it), got shape ", t.sizes(),
              " with strides ", t.strides());
}

void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, "bitmaps::", op, ": ", name, " must be ", dtype,
              ", got ", t.scalar_type());
}

CpuPath current_path() {
  CpuPath path;
  std::string error;
  TORCH_CHECK(resolve_cpu_path(&path, &error), error);
  return path;
}

// The threads of torch.get_num_threads(), through at::parallel_for (OpenMP: torch's pool).
const cpu::Parallel& torch_threads() {
  static const cpu::Parallel parallel = [] {
    cpu::Parallel p;
    p.run = [](int64_t workers, const std::function<void(int64_t)>& body) {
      // One call per chunk: it claims items until none are left (cpu_binary_linear.h).
      at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t) { body(begin); });
    };
    return p;
  }();
  return parallel;
}

cpu::Parallel current_threads() {
  cpu::Parallel p = torch_threads();
  p.max_workers = at::get_num_threads();
  return p;
}

at::Tensor pack_signs_cpu(const at::Tensor& x) {
  constexpr const char* op = "pack_signs";
  check_cpu(x, op, "x");
  TORCH_CHECK(x.dim() >= 1, "bitmaps::pack_signs: x must have at least one dimension (packed "
              "along the last), got a 0-d tensor");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                  dtype == at::kDouble,
              "bitmaps::pack_signs: x must be float32, float16, bfloat16 or float64, got ", dtype);
  const CpuPath path = current_path();
  const int64_t k = x.size(-1);
  const int64_t kw = packed_width(k);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = kw;
  at::Tensor out = at::empty(shape, x.options().dtype(at::kInt));
  count_cpu_call(kOpPackSigns, path);
  if (out.numel() == 0) return out;

  // bfloat16 -> float32 is exact (sign, zeros and NaNs included), so it reuses the float32 kernel.
  const at::Tensor xc = (dtype == at::kBFloat16 ? x.to(at::kFloat) : x).contiguous();
  const int64_t rows = xc.numel() / k;
  const cpu::Parallel parallel = current_threads();
  const int64_t per_item = cpu::rows_per_item(rows, k, parallel.max_workers);
  int32_t* dst = out.data_ptr<int32_t>();
  const int workers = cpu::parallel_claim(parallel, (rows + per_item - 1) / per_item, [&](int64_t item) {
    const int64_t r0 = item * per_item, count = std::min(rows - r0, per_item);
    switch (xc.scalar_type()) {
      case at::kHalf:
        cpu::pack_signs_f16(path, reinterpret_cast<const uint16_t*>(xc.const_data_ptr()) + r0 * k,
                            count, k, false, 0.0f, nullptr, dst + r0 * kw);
        break;
      case at::kDouble:
        cpu::pack_signs_f64(xc.const_data_ptr<double>() + r0 * k, count, k, dst + r0 * kw);
        break;
      default:
        cpu::pack_signs_f32(path, xc.const_data_ptr<float>() + r0 * k, count, k, false, 0.0f,
                            nullptr, dst + r0 * kw);
    }
  });
  record_parallel_workers(workers);
  return out;
}

at::Tensor xnor_gemm_cpu(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  constexpr const char* op = "xnor_gemm";
  check_cpu(a, op, "a");
  check_cpu(b, op, "b");
  check_dtype(a, at::kInt, op, "a");
  check_dtype(b, at::kInt, op, "b");
  TORCH_CHECK(k >= 1, "bitmaps::xnor_gemm: k (the number of packed bits per row) must be >= 1, "
              "got ", k);
  const int64_t kw = packed_width(k);
  TORCH_CHECK(a.dim() == 2 && a.size(1) == kw, "bitmaps::xnor_gemm: a must have shape [M, ", kw,
              "] (ceil(k/32) words for k=", k, "), got ", a.sizes());
  TORCH_CHECK(b.dim() == 2 && b.size(1) == kw, "bitmaps::xnor_gemm: b must have shape [N, ", kw,
              "] (ceil(k/32) words for k=", k, "), got ", b.sizes());
  check_contiguous(a, op, "a");
  check_contiguous(b, op, "b");
  const CpuPath path = current_path();
  const int64_t m = a.size(0), n = b.size(0);
  at::Tensor out = at::empty({m, n}, a.options());
  count_cpu_call(kOpXnorGemm, path);
  if (m == 0 || n == 0) return out;

  record_parallel_workers(cpu::xnor_gemm(path, a.const_data_ptr<int32_t>(), m,
                                         b.const_data_ptr<int32_t>(), n, k,
                                         out.data_ptr<int32_t>(), current_threads()));
  return out;
}

void check_binary_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                         const std::optional<at::Tensor>& bias, int64_t in_features) {
  constexpr const char* op = "binary_linear";
  check_cpu(x, op, "x");
  check_cpu(w, op, "w");
  check_cpu(w_scale, op, "w_scale");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf,
              "bitmaps::binary_linear: x must be float32 or float16, got ", x.scalar_type());
  check_dtype(w, at::kInt, op, "w (packed weight signs)");
  check_dtype(w_scale, at::kFloat, op, "w_scale");
  TORCH_CHECK(in_features >= 1, "bitmaps::binary_linear: in_features must be >= 1, got ",
              in_features);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "bitmaps::binary_linear: x.shape[-1] "
              "must equal in_features=", in_features, ", got x of shape ", x.sizes());
  const int64_t kw = packed_width(in_features);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == kw, "bitmaps::binary_linear: w must have shape "
              "[out_features, ", kw, "] (ceil(in_features/32) words for in_features=",
              in_features, "), got ", w.sizes());
  const int64_t n = w.size(0);
  TORCH_CHECK(w_scale.dim() == 1 && w_scale.size(0) == n, "bitmaps::binary_linear: w_scale must "
              "have shape [out_features] = [", n, "], got ", w_scale.sizes());
  check_contiguous(w, op, "w");
  check_contiguous(w_scale, op, "w_scale");
  if (bias.has_value()) {
    check_cpu(*bias, op, "bias");
    check_dtype(*bias, at::kFloat, op, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "bitmaps::binary_linear: bias must have "
                "shape [out_features] = [", n, "], got ", bias->sizes());
    check_contiguous(*bias, op, "bias");
  }
}

void check_act_unsigned(int64_t act_unsigned, const char* op,
                        const char* name = "act_unsigned") {
  TORCH_CHECK(act_unsigned == 0 || act_unsigned == 1, "bitmaps::", op, ": ", name,
              " must be 0 (activations binarized to +-1) or 1 ({0, 1}), got ", act_unsigned);
}

// The op of DESIGN.md with weights as packed rows (w) or prepacked panels.
at::Tensor run_binary_linear(const at::Tensor& x, const at::Tensor& weights, bool prepacked,
                             int64_t n, const at::Tensor& w_scale,
                             const std::optional<at::Tensor>& bias, int64_t in_features,
                             double act_threshold, double act_scale, int64_t act_unsigned,
                             bool gelu = false) {
  const CpuPath path = current_path();
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = n;
  at::Tensor out = at::empty(shape, x.options());
  count_cpu_call(kOpBinaryLinear, path);
  if (out.numel() == 0) return out;

  const at::Tensor xc = x.contiguous();
  cpu::BinaryLinearArgs args;
  args.x = xc.const_data_ptr();
  args.x_half = xc.scalar_type() == at::kHalf;
  args.m = xc.numel() / in_features;
  args.k = in_features;
  args.n = n;
  (prepacked ? args.panels : args.w) = weights.const_data_ptr<int32_t>();
  args.w_scale = w_scale.const_data_ptr<float>();
  args.bias = bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
  // The reference computes x - beta and scales in float32: beta and a fixed scale are rounded
  // to float32 first, exactly as torch does for a Python scalar with a float32 tensor.
  args.act_threshold = static_cast<float>(act_threshold);
  args.act_scale = act_scale > 0.0 ? static_cast<float>(act_scale) : 0.0f;
  args.act_unsigned = act_unsigned != 0;
  args.gelu = gelu;
  args.y = out.data_ptr();
  record_parallel_workers(cpu::binary_linear(path, args, current_threads()));
  return out;
}

at::Tensor binary_linear_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                             const std::optional<at::Tensor>& bias, int64_t in_features,
                             double act_threshold, double act_scale, int64_t act_unsigned) {
  check_binary_linear(x, w, w_scale, bias, in_features);
  check_act_unsigned(act_unsigned, "binary_linear");
  return run_binary_linear(x, w, false, w.size(0), w_scale, bias, in_features, act_threshold,
                           act_scale, act_unsigned);
}

// Prepacked weights: int32 [ceil(N / 16), ceil(K / 32), 16], the GEMM's panel layout (the same on
// every CPU path), built once at load by prepack_weights.
void check_panels(const at::Tensor& panels, int64_t n, int64_t in_features, const char* op,
                  const char* name = "panels") {
  check_cpu(panels, op, name);
  check_dtype(panels, at::kInt, op, (std::string(name) + " (prepacked weights)").c_str());
  const int64_t rows = cpu::kPanelRows;
  TORCH_CHECK(panels.dim() == 3 && panels.size(0) == (n + rows - 1) / rows &&
                  panels.size(1) == packed_width(in_features) && panels.size(2) == rows,
              "bitmaps::", op, ": ", name, " must have shape [", (n + rows - 1) / rows, ", ",
              packed_width(in_features), ", ", rows, "] (bitmaps::prepack_weights of ", n,
              " rows of in_features=", in_features, " bits), got ", panels.sizes());
  check_contiguous(panels, op, name);
  const int64_t row = cpu::panel_row_with_bits_past_k(panels.data_ptr<int32_t>(), n, in_features);
  TORCH_CHECK(row < 0, "bitmaps::", op, ": ", name, " hold bits past in_features=", in_features,
              " (row ", row, "): prepacked for another in_features? Prepack the weights with "
              "this one (bitmaps::prepack_weights)");
}

at::Tensor prepack_weights_cpu(const at::Tensor& w, int64_t in_features) {
  constexpr const char* op = "prepack_weights";
  check_cpu(w, op, "w");
  check_dtype(w, at::kInt, op, "w (packed weight signs)");
  TORCH_CHECK(in_features >= 1, "bitmaps::prepack_weights: in_features must be >= 1, got ",
              in_features);
  const int64_t kw = packed_width(in_features), rows = cpu::kPanelRows;
  TORCH_CHECK(w.dim() == 2 && w.size(1) == kw, "bitmaps::prepack_weights: w must have shape "
              "[out_features, ", kw, "] (ceil(in_features/32) words for in_features=",
              in_features, "), got ", w.sizes());
  check_contiguous(w, op, "w");
  const int64_t n = w.size(0);
  at::Tensor panels = at::empty({(n + rows - 1) / rows, kw, rows}, w.options());
  if (panels.numel() > 0) {
    cpu::prepack_weights(w.const_data_ptr<int32_t>(), n, in_features, panels.data_ptr<int32_t>(),
                         current_threads());
  }
  return panels;
}

at::Tensor binary_linear_prepacked_cpu(const at::Tensor& x, const at::Tensor& panels,
                                       const at::Tensor& w_scale,
                                       const std::optional<at::Tensor>& bias,
                                       int64_t in_features, double act_threshold,
                                       double act_scale, int64_t act_unsigned,
                                       int64_t activation) {
  constexpr const char* op = "binary_linear_prepacked";
  check_cpu(x, op, "x");
  check_cpu(w_scale, op, "w_scale");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf, "bitmaps::", op,
              ": x must be float32 or float16, got ", x.scalar_type());
  TORCH_CHECK(in_features >= 1, "bitmaps::", op, ": in_features must be >= 1, got ", in_features);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "bitmaps::", op, ": x.shape[-1] must "
              "equal in_features=", in_features, ", got x of shape ", x.sizes());
  check_dtype(w_scale, at::kFloat, op, "w_scale");
  TORCH_CHECK(w_scale.dim() == 1, "bitmaps::", op, ": w_scale must have shape [out_features], "
              "got ", w_scale.sizes());
  check_contiguous(w_scale, op, "w_scale");
  const int64_t n = w_scale.size(0);
  check_panels(panels, n, in_features, op);
  if (bias.has_value()) {
    check_cpu(*bias, op, "bias");
    check_dtype(*bias, at::kFloat, op, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "bitmaps::", op, ": bias must have "
                "shape [out_features] = [", n, "], got ", bias->sizes());
    check_contiguous(*bias, op, "bias");
  }
  check_act_unsigned(act_unsigned, op);
  TORCH_CHECK(activation == 0 || activation == 1, "bitmaps::", op, ": activation must be 0 "
              "(none) or 1 (GELU, erf form), got ", activation);
  return run_binary_linear(x, panels, true, n, w_scale, bias, in_features, act_threshold,
                           act_scale, act_unsigned, activation == 1);
}

// Q, K and V side by side in qkv [B, S, 3 * H * D] (a stacked projection's output), attention
// over the heads with an additive bias broadcast from [B or 1, H or 1, S or 1, S] (or none): the
// kernel of cpu_attention.h, which reads Q, K and V in place (row stride 3 * H * D); int8: its
// int8 scheme.
at::Tensor packed_attention_cpu(const at::Tensor& qkv, const std::optional<at::Tensor>& bias,
                                int64_t num_heads, double scale, bool int8) {
  constexpr const char* op = "packed_attention";
  check_cpu(qkv, op, "qkv");
  check_dtype(qkv, at::kFloat, op, "qkv");
  // below 2^31: 3 * num_heads must not overflow (it wrapped to 2 for 6148914691236517206)
  TORCH_CHECK(num_heads >= 1 && num_heads < (int64_t{1} << 31), "bitmaps::", op,
              ": num_heads must be in [1, 2^31 - 1], got ", num_heads);
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(2) % (3 * num_heads) == 0, "bitmaps::", op,
              ": qkv must have shape [batch, seq, 3 * num_heads * head_dim] (num_heads=",
              num_heads, "), got ", qkv.sizes());
  TORCH_CHECK(std::isfinite(scale), "bitmaps::", op, ": scale must be finite, got ", scale);
  const at::Tensor x = qkv.contiguous();
  const int64_t batch = x.size(0), seq = x.size(1), hidden = x.size(2) / 3;
  cpu::AttentionArgs a;
  a.set_packed(x.const_data_ptr<float>(), batch, seq, num_heads, hidden / num_heads);
  a.scale = static_cast<float>(scale);
  a.int8 = int8;
  at::Tensor b;
  if (bias.has_value()) {
    check_cpu(*bias, op, "bias");
    check_dtype(*bias, at::kFloat, op, "bias");
    const auto d = bias->sizes();
    TORCH_CHECK(d.size() == 4 && a.bias_fits(d.data()), "bitmaps::", op, ": bias must have shape "
                "[batch or 1, num_heads or 1, seq or 1, seq] = [", batch, ", ", num_heads, ", ",
                seq, ", ", seq, "], got ", d);
    b = bias->contiguous();
    a.set_bias(b.const_data_ptr<float>(), d.data());
  }
  at::Tensor out = at::empty({batch, seq, hidden}, x.options());
  if (out.numel() == 0) return out;
  a.out = out.data_ptr<float>();
  record_parallel_workers(cpu::attention(current_path(), a, current_threads()));
  return out;
}

// LayerNorm(x + skip) over the last dimension (cpu_layer_norm.h): a post-LN encoder's residual
// add and normalization in one pass over the rows.
at::Tensor skip_layer_norm_cpu(const at::Tensor& x, const at::Tensor& skip, const at::Tensor& gamma,
                               const std::optional<at::Tensor>& beta, double epsilon) {
  constexpr const char* op = "skip_layer_norm";
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&x, "x"}, {&skip, "skip"},
                                {&gamma, "gamma"}}) {
    check_cpu(*t, op, name);
    check_dtype(*t, at::kFloat, op, name);
  }
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) >= 1, "bitmaps::", op,
              ": x must have at least one dimension, the last not empty, got shape ", x.sizes());
  TORCH_CHECK(skip.sizes() == x.sizes(), "bitmaps::", op, ": skip must have the shape of x ",
              x.sizes(), ", got ", skip.sizes());
  const int64_t n = x.size(-1);
  TORCH_CHECK(gamma.dim() == 1 && gamma.size(0) == n, "bitmaps::", op, ": gamma must have shape [",
              n, "] (x's last dimension), got ", gamma.sizes());
  if (beta.has_value()) {
    check_cpu(*beta, op, "beta");
    check_dtype(*beta, at::kFloat, op, "beta");
    TORCH_CHECK(beta->dim() == 1 && beta->size(0) == n, "bitmaps::", op, ": beta must have "
                "shape [", n, "] (x's last dimension), got ", beta->sizes());
  }
  TORCH_CHECK(epsilon >= 0.0 && std::isfinite(epsilon), "bitmaps::", op,
              ": epsilon must be finite and >= 0, got ", epsilon);
  const at::Tensor xc = x.contiguous(), sc = skip.contiguous(), gc = gamma.contiguous();
  const at::Tensor bc = beta.has_value() ? beta->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(xc);
  if (out.numel() == 0) return out;
  cpu::AddLayerNormArgs a;
  a.x = xc.const_data_ptr<float>();
  a.skip = sc.const_data_ptr<float>();
  a.gamma = gc.const_data_ptr<float>();
  a.beta = beta.has_value() ? bc.const_data_ptr<float>() : nullptr;
  a.rows = xc.numel() / n;
  a.n = n;
  a.epsilon = static_cast<float>(epsilon);
  a.out = out.data_ptr<float>();
  record_parallel_workers(cpu::add_layer_norm(current_path(), a, current_threads()));
  return out;
}

// Int4 embedding lookups summed, then LayerNorm (cpu_embed.h): BERT's word, token-type and
// position embeddings with their LayerNorm in one pass over the rows. ids[i] indexes the table
// data[i] ([rows, hidden / 2] uint8, two values per byte) with scale[i] ([rows, hidden / block]);
// the ids have one rank and broadcast (dimensions of 1), as bitmaps::EmbedLayerNormalization.
at::Tensor embed_layer_norm_cpu(at::TensorList ids, at::TensorList data, at::TensorList scale,
                                const at::Tensor& gamma, const std::optional<at::Tensor>& beta,
                                double epsilon) {
  constexpr const char* op = "embed_layer_norm";
  const int64_t count = static_cast<int64_t>(ids.size());
  TORCH_CHECK(count >= 2 && count <= 3 && data.size() == ids.size() && scale.size() == ids.size(),
              "bitmaps::", op, ": ids, data and scale must be lists of 2 or 3 tensors each (one "
              "per lookup), got ", ids.size(), ", ", data.size(), " and ", scale.size());
  check_cpu(gamma, op, "gamma");
  check_dtype(gamma, at::kFloat, op, "gamma");
  TORCH_CHECK(gamma.dim() == 1, "bitmaps::", op, ": gamma must have shape [hidden], got ",
              gamma.sizes());
  const int64_t n = gamma.size(0);
  TORCH_CHECK(n >= 2 && n % 2 == 0, "bitmaps::", op,
              ": the hidden size (gamma's length) must be even and >= 2, got ", n);
  if (beta.has_value()) {
    check_cpu(*beta, op, "beta");
    check_dtype(*beta, at::kFloat, op, "beta");
    TORCH_CHECK(beta->dim() == 1 && beta->size(0) == n, "bitmaps::", op,
                ": beta must have gamma's shape [", n, "], got ", beta->sizes());
  }
  TORCH_CHECK(epsilon >= 0.0 && std::isfinite(epsilon), "bitmaps::", op,
              ": epsilon must be finite and >= 0, got ", epsilon);
  const int64_t rank = ids[0].dim();
  TORCH_CHECK(rank >= 1, "bitmaps::", op, ": ids[0] must have at least one dimension");
  // The block size from scale[0] (ONNX Runtime's node has it as an attribute); every lookup's
  // shapes are then checked against it by fit_embedding_lookup.
  const int64_t groups = scale[0].dim() == 2 ? scale[0].size(1) : 0;
  TORCH_CHECK(groups >= 1 && n % groups == 0 && (n / groups) % 2 == 0, "bitmaps::", op,
              ": scale[0] must have shape [rows, hidden / block] with an even block dividing "
              "hidden ", n, ", got ", scale[0].sizes());
  cpu::EmbedLayerNormArgs args;
  args.count = static_cast<int>(count);
  args.n = n;
  args.block = n / groups;
  args.epsilon = static_cast<float>(epsilon);
  args.lead_dims.assign(static_cast<size_t>(rank), 1);
  std::vector<at::Tensor> keep;  // the contiguous copies the kernel reads
  for (int64_t t = 0; t < count; ++t) {
    const std::string i = std::to_string(t);
    const std::string names[3] = {"ids[" + i + "]", "data[" + i + "]", "scale[" + i + "]"};
    const at::Tensor& id = ids[t];
    check_cpu(id, op, names[0].c_str());
    check_cpu(data[t], op, names[1].c_str());
    check_cpu(scale[t], op, names[2].c_str());
    TORCH_CHECK(id.scalar_type() == at::kLong || id.scalar_type() == at::kInt, "bitmaps::", op,
                ": ", names[0], " must be Long or Int, got ", id.scalar_type());
    check_dtype(data[t], at::kByte, op, names[1].c_str());
    check_dtype(scale[t], at::kFloat, op, names[2].c_str());
    const std::string bad = cpu::fit_embedding_lookup(&args, static_cast<int>(t), id.sizes().vec(),
                                                      data[t].sizes().vec(),
                                                      scale[t].sizes().vec(), names, "ids[0]");
    TORCH_CHECK(bad.empty(), "bitmaps::", op, ": ", bad);
    keep.push_back(id.contiguous());
    keep.push_back(data[t].contiguous());
    keep.push_back(scale[t].contiguous());
    cpu::EmbeddingLookup& l = args.lookups[t];
    l.ids = keep[keep.size() - 3].const_data_ptr();
    l.ids_int32 = id.scalar_type() == at::kInt;
    l.data = keep[keep.size() - 2].const_data_ptr<uint8_t>();
    l.scale = keep[keep.size() - 1].const_data_ptr<float>();
    const std::string range = cpu::check_embedding_ids(l);
    TORCH_CHECK(range.empty(), "bitmaps::", op, ": ", names[0], " ", range, " (", names[1],
                "'s rows)");
  }
  const at::Tensor gc = gamma.contiguous();
  const at::Tensor bc = beta.has_value() ? beta->contiguous() : at::Tensor();
  std::vector<int64_t> out_dims = args.lead_dims;
  out_dims.push_back(n);
  at::Tensor out = at::empty(out_dims, gamma.options());
  if (out.numel() == 0) return out;
  args.gamma = gc.const_data_ptr<float>();
  args.beta = beta.has_value() ? bc.const_data_ptr<float>() : nullptr;
  args.out = out.data_ptr<float>();
  record_parallel_workers(cpu::embed_layer_norm(current_path(), args, current_threads()));
  return out;
}

// One prepacked layer's weights, sizes and activation settings (checked by the caller).
void set_layer(cpu::BinaryLinearArgs* a, const at::Tensor& panels, const at::Tensor& w_scale,
               const std::optional<at::Tensor>& bias, int64_t in_features, double act_threshold,
               double act_scale, int64_t act_unsigned) {
  a->k = in_features;
  a->n = w_scale.size(0);
  a->panels = panels.const_data_ptr<int32_t>();
  a->w_scale = w_scale.const_data_ptr<float>();
  a->bias = bias.has_value() ? bias->const_data_ptr<float>() : nullptr;
  a->act_threshold = static_cast<float>(act_threshold);
  a->act_scale = act_scale > 0.0 ? static_cast<float>(act_scale) : 0.0f;
  a->act_unsigned = act_unsigned != 0;
}

// The FFN's table (cpu::ffn_bit_table) as int32 [2, runs, n]: lo, then hi.
at::Tensor ffn_bit_table_cpu(const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                             int64_t in_features, double act_scale, int64_t act_unsigned,
                             int64_t activation, double next_act_threshold,
                             int64_t next_act_unsigned) {
  constexpr const char* op = "ffn_bit_table";
  check_cpu(w_scale, op, "w_scale");
  check_dtype(w_scale, at::kFloat, op, "w_scale");
  TORCH_CHECK(in_features >= 1 && in_features <= cpu::kMaxFfnTableFeatures, "bitmaps::", op,
              ": in_features must be in [1, ", cpu::kMaxFfnTableFeatures, "] (the table looks at "
              "every dot product of the layer), got ", in_features);
  TORCH_CHECK(act_scale > 0.0, "bitmaps::", op, ": act_scale must be > 0 (a fixed scale), got ",
              act_scale);
  TORCH_CHECK(w_scale.dim() == 1, "bitmaps::", op, ": w_scale must have shape [out_features], "
              "got ", w_scale.sizes());
  const at::Tensor ws = w_scale.contiguous();
  at::Tensor b;
  if (bias.has_value()) {
    check_cpu(*bias, op, "bias");
    check_dtype(*bias, at::kFloat, op, "bias");
    TORCH_CHECK(bias->sizes() == w_scale.sizes(), "bitmaps::", op, ": bias must have shape ",
                w_scale.sizes(), ", got ", bias->sizes());
    b = bias->contiguous();
  }
  check_act_unsigned(act_unsigned, op);
  check_act_unsigned(next_act_unsigned, op, "next_act_unsigned");
  TORCH_CHECK(activation == 0 || activation == 1, "bitmaps::", op, ": activation must be 0 "
              "(none) or 1 (GELU, erf form), got ", activation);
  cpu::BinaryLinearArgs first, second;
  first.k = in_features;
  first.n = ws.size(0);
  first.w_scale = ws.const_data_ptr<float>();
  first.bias = bias.has_value() ? b.const_data_ptr<float>() : nullptr;
  first.act_scale = static_cast<float>(act_scale);
  first.act_unsigned = act_unsigned != 0;
  first.gelu = activation == 1;
  second.act_threshold = static_cast<float>(next_act_threshold);
  second.act_scale = 1.0f;  // any fixed scale: the table does not depend on it
  second.act_unsigned = next_act_unsigned != 0;
  cpu::FfnBitTable table;
  TORCH_CHECK(cpu::ffn_bit_table(first, second, &table), "bitmaps::", op, ": a column needs "
              "more than ", cpu::kMaxFfnRuns, " ranges");
  at::Tensor out = at::empty({2, table.runs, first.n}, ws.options().dtype(at::kInt));
  std::copy(table.lo.begin(), table.lo.end(), out.data_ptr<int32_t>());
  std::copy(table.hi.begin(), table.hi.end(), out.data_ptr<int32_t>() + table.lo.size());
  return out;
}

// Two prepacked binary layers through the table (cpu::binary_ffn): bitmaps::BinaryFeedForward.
at::Tensor binary_ffn_prepacked_cpu(
    const at::Tensor& x, const at::Tensor& panels, const at::Tensor& w_scale,
    const std::optional<at::Tensor>& bias, int64_t in_features, double act_threshold,
    double act_scale, int64_t act_unsigned, int64_t activation, const at::Tensor& table,
    const at::Tensor& next_panels, const at::Tensor& next_w_scale,
    const std::optional<at::Tensor>& next_bias, double next_act_threshold,
    double next_act_scale, int64_t next_act_unsigned) {
  constexpr const char* op = "binary_ffn_prepacked";
  check_cpu(x, op, "x");
  check_dtype(x, at::kFloat, op, "x");
  TORCH_CHECK(act_scale > 0.0 && next_act_scale > 0.0, "bitmaps::", op, ": act_scale and "
              "next_act_scale must be > 0 (fixed scales), got ", act_scale, " and ",
              next_act_scale);
  const int64_t hidden = w_scale.size(0);
  check_cpu(table, op, "table");
  check_dtype(table, at::kInt, op, "table");
  TORCH_CHECK(table.dim() == 3 && table.size(0) == 2 && table.size(1) <= cpu::kMaxFfnRuns &&
                  table.size(2) == hidden, "bitmaps::", op, ": table must have shape [2, runs <= ",
              cpu::kMaxFfnRuns, ", ", hidden, "] (bitmaps::ffn_bit_table), got ", table.sizes());
  check_contiguous(table, op, "table");
  TORCH_CHECK(in_features >= 1, "bitmaps::", op, ": in_features must be >= 1, got ", in_features);
  // Each layer's own checks (shapes, dtypes, panels) are binary_linear_prepacked's, each argument
  // named as the caller gave it (the second layer's with next_)
  for (const auto& [ps, sc, bi, k, un, prefix] :
       {std::tuple{&panels, &w_scale, &bias, in_features, act_unsigned, ""},
        std::tuple{&next_panels, &next_w_scale, &next_bias, hidden, next_act_unsigned,
                   "next_"}}) {
    const std::string p = prefix, scale = p + "w_scale", bias_name = p + "bias";
    check_cpu(*sc, op, scale.c_str());
    check_dtype(*sc, at::kFloat, op, scale.c_str());
    TORCH_CHECK(sc->dim() == 1, "bitmaps::", op, ": ", scale, " must have shape "
                "[out_features], got ", sc->sizes());
    check_contiguous(*sc, op, scale.c_str());
    check_panels(*ps, sc->size(0), k, op, (p + "panels").c_str());
    if (bi->has_value()) {
      check_cpu(**bi, op, bias_name.c_str());
      check_dtype(**bi, at::kFloat, op, bias_name.c_str());
      TORCH_CHECK((*bi)->sizes() == sc->sizes(), "bitmaps::", op, ": ", bias_name,
                  " must have shape ", sc->sizes(), ", got ", (*bi)->sizes());
      check_contiguous(**bi, op, bias_name.c_str());
    }
    check_act_unsigned(un, op, (p + "act_unsigned").c_str());
  }
  TORCH_CHECK(activation == 0 || activation == 1, "bitmaps::", op, ": activation must be 0 "
              "(none) or 1 (GELU, erf form), got ", activation);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "bitmaps::", op, ": x.shape[-1] must "
              "equal in_features=", in_features, ", got x of shape ", x.sizes());
  const CpuPath path = current_path();
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = next_w_scale.size(0);
  at::Tensor out = at::empty(shape, x.options());
  count_cpu_call(kOpBinaryLinear, path);
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous();
  cpu::BinaryFfnArgs a;
  set_layer(&a.first, panels, w_scale, bias, in_features, act_threshold, act_scale, act_unsigned);
  a.first.x = xc.const_data_ptr();
  a.first.m = xc.numel() / in_features;
  a.first.gelu = activation == 1;
  set_layer(&a.second, next_panels, next_w_scale, next_bias, hidden, next_act_threshold,
            next_act_scale, next_act_unsigned);
  a.bit_lo = table.const_data_ptr<int32_t>();
  a.bit_hi = a.bit_lo + table.size(1) * hidden;
  a.bit_runs = static_cast<int>(table.size(1));
  a.y = out.data_ptr();
  record_parallel_workers(cpu::binary_ffn(path, a, current_threads()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(bitmaps, CPU, m) {
  m.impl("pack_signs", &pack_signs_cpu);
  m.impl("xnor_gemm", &xnor_gemm_cpu);
  m.impl("binary_linear", &binary_linear_cpu);
  m.impl("prepack_weights", &prepack_weights_cpu);
  m.impl("binary_linear_prepacked", &binary_linear_prepacked_cpu);
  m.impl("packed_attention", &packed_attention_cpu);
  m.impl("skip_layer_norm", &skip_layer_norm_cpu);
  m.impl("embed_layer_norm", &embed_layer_norm_cpu);
  m.impl("ffn_bit_table", &ffn_bit_table_cpu);
  m.impl("binary_ffn_prepacked", &binary_ffn_prepacked_cpu);
}

}  // namespace bitmaps
