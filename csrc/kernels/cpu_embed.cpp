// cpu_embed.h: the driver (work items of rows), the portable dequantization and the index check.
#include "kernels/cpu_embed.h"

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cpu_layer_norm.h"

namespace bitmaps::cpu {
namespace {

int64_t id_at(const EmbeddingLookup& l, int64_t i) {
  return l.ids_int32 ? static_cast<const int32_t*>(l.ids)[i] : static_cast<const int64_t*>(l.ids)[i];
}

int64_t element_count(const std::vector<int64_t>& dims) {
  int64_t count = 1;
  for (int64_t d : dims) count *= d;
  return count;
}

// Row `v` of a table (v in [-rows, rows), checked before), dequantized into out [n]; with `add`,
// added to what out holds (out[j] + value, one float32 rounding each, as the graph's Add).
template <bool kAdd>
void dequantize_row(CpuPath path, const EmbeddingLookup& l, int64_t v, int64_t n, int64_t block,
                    float* out) {
  if (v < 0) v += l.rows;
  const uint8_t* data = l.data + v * (n / 2);
  const float* scale = l.scale + v * (n / block);
#if defined(BITMAPS_HAVE_X86_PATHS)
  if (path == CpuPath::kAvx512) return detail::dequantize_row_avx512(data, scale, n, block, kAdd, out);
#endif
  (void)path;
  for (int64_t g = 0; g < n / block; ++g) {
    const float s = scale[g];
    const uint8_t* d = data + g * (block / 2);
    float* o = out + g * block;
    for (int64_t b = 0; b < block / 2; ++b) {
      const float lo = static_cast<float>((d[b] & 15) - 8) * s;
      const float hi = static_cast<float>((d[b] >> 4) - 8) * s;
      o[2 * b] = kAdd ? o[2 * b] + lo : lo;
      o[2 * b + 1] = kAdd ? o[2 * b + 1] + hi : hi;
    }
  }
}

}  // namespace

std::string check_embedding_ids(const EmbeddingLookup& l) {
  const int64_t count = element_count(l.ids_dims);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t v = id_at(l, i);
    if (v < -l.rows || v >= l.rows) {
      return "holds " + std::to_string(v) + " at position " + std::to_string(i) + ", outside [" +
             std::to_string(-l.rows) + ", " + std::to_string(l.rows) + ")";
    }
  }
  return "";
}

namespace {

// dims as "[2, ?, 8]" (-1: not known yet).
std::string text(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    out += (i ? ", " : "") + (dims[i] < 0 ? std::string("?") : std::to_string(dims[i]));
  }
  return out + "]";
}

}  // namespace

std::string check_embedding_table(int64_t n, int64_t block, const std::vector<int64_t>& table,
                                  const std::vector<int64_t>& scale, const std::string& table_name,
                                  const std::string& scale_name) {
  const auto is = [](int64_t dim, int64_t want) { return dim < 0 || dim == want; };
  const bool fits = table.size() == 2 && scale.size() == 2 && is(table[1], n / 2) &&
                    is(scale[1], n / block) && table[0] != 0 &&
                    (table[0] < 0 || is(scale[0], table[0]));
  if (fits) return "";
  return table_name + " " + text(table) + " and " + scale_name + " " + text(scale) +
         " must be [rows, " + std::to_string(n / 2) + "] and [rows, " + std::to_string(n / block) +
         "] with rows >= 1 (hidden " + std::to_string(n) + ", block_size " +
         std::to_string(block) + ")";
}

std::string fit_embedding_lookup(EmbedLayerNormArgs* args, int t, const std::vector<int64_t>& ids,
                                 const std::vector<int64_t>& table,
                                 const std::vector<int64_t>& scale, const std::string (&names)[3],
                                 const std::string& first_ids) {
  const size_t rank = args->lead_dims.size();
  if (ids.size() != rank) {
    return names[0] + " must have " + first_ids + "'s rank " + std::to_string(rank) + ", got " +
           text(ids);
  }
  for (size_t k = 0; k < rank; ++k) {
    if (ids[k] == 1) continue;
    if (args->lead_dims[k] != 1 && args->lead_dims[k] != ids[k]) {
      return names[0] + " " + text(ids) + " does not broadcast with the other lookups' ids " +
             "(dimension " + std::to_string(k) + ")";
    }
    args->lead_dims[k] = ids[k];
  }
  const std::string bad = check_embedding_table(args->n, args->block, table, scale, names[1],
                                                names[2]);
  if (!bad.empty()) return bad;
  args->lookups[t].ids_dims = ids;
  args->lookups[t].rows = table[0];
  return "";
}

int embed_layer_norm(CpuPath path, const EmbedLayerNormArgs& a, const Parallel& parallel) {
  const int64_t rows = element_count(a.lead_dims), n = a.n, rank = a.lead_dims.size();
  if (rows <= 0 || n <= 0) return 0;
  // Each lookup's element stride along each output dimension (0 where it broadcasts).
  std::vector<int64_t> strides(3 * rank, 0);
  for (int t = 0; t < a.count; ++t) {
    int64_t stride = 1;
    for (int64_t d = rank - 1; d >= 0; --d) {
      strides[t * rank + d] = a.lookups[t].ids_dims[d] == 1 ? 0 : stride;
      stride *= a.lookups[t].ids_dims[d];
    }
  }
  const int64_t per_item = rows_per_item(rows, n, parallel.max_workers, 16384);
  const int64_t items = (rows + per_item - 1) / per_item;
  return parallel_claim(parallel, items, [&](int64_t item) {
    std::vector<float> sum(n), last(n);
    const int64_t r0 = item * per_item, r1 = std::min(rows, r0 + per_item);
    for (int64_t r = r0; r < r1; ++r) {
      int64_t at[3] = {0, 0, 0};  // element of each index tensor for output row r
      for (int64_t d = rank - 1, rest = r; d >= 0; --d) {
        const int64_t i = rest % a.lead_dims[d];
        rest /= a.lead_dims[d];
        for (int t = 0; t < a.count; ++t) at[t] += i * strides[t * rank + d];
      }
      // e = T0 + T1 (+ T2): the last lookup is the LayerNorm's skip, the sum before it its x
      dequantize_row<false>(path, a.lookups[0], id_at(a.lookups[0], at[0]), n, a.block, sum.data());
      for (int t = 1; t + 1 < a.count; ++t) {
        dequantize_row<true>(path, a.lookups[t], id_at(a.lookups[t], at[t]), n, a.block, sum.data());
      }
      const EmbeddingLookup& l = a.lookups[a.count - 1];
      dequantize_row<false>(path, l, id_at(l, at[a.count - 1]), n, a.block, last.data());
      AddLayerNormArgs norm;
      norm.x = sum.data();
      norm.skip = last.data();
      norm.gamma = a.gamma;
      norm.beta = a.beta;
      norm.rows = 1;
      norm.n = n;
      norm.epsilon = a.epsilon;
      norm.out = a.out + r * n;
      detail::add_layer_norm_rows(path, norm, 0, 1);
    }
  });
}

}  // namespace bitmaps::cpu
