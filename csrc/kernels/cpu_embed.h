// Embedding lookups from 4-bit tables, summed, then LayerNorm, on the CPU, torch-free: the first
// step of a BERT encoder in one pass over the rows (bitmaps::EmbedLayerNormalization, the
// onnxruntime export target's node for the int4 word, token-type and position lookups, their
// additions and the LayerNorm after them).
//
// Each table holds V rows of n values packed two per byte (low nibble first, zero point 8) with a
// float32 scale per block of `block` values along the row, the layout of bitmaps.core.embeddings
// and of com.microsoft.GatherBlockQuantized (bits 4, gather_axis 0, quantize_axis 1):
//
//   T[v, j] = ((data[v, j / 2] >> 4 * (j % 2)) & 15) - 8) * scale[v, j / block]
//   e = T0[ids0] + T1[ids1] (+ T2[ids2]);  out = LayerNorm(e) * gamma + beta      (per row)
//
// in that order of float32 additions (the graph's Add nodes), the LayerNorm that of
// cpu_layer_norm.h with the last lookup as its `skip`. Index tensors have one shape each, of the
// same rank, every dimension either the output's or 1 (broadcast, as the position ids [1, seq]
// beside input ids [batch, seq]); an index v < 0 means v + V, as in Gather. The caller checks the
// indices first (check_embedding_ids): the kernel reads any index it is given.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu_binary_linear.h"
#include "kernels/cpu_features.h"

namespace bitmaps::cpu {

struct EmbeddingLookup {
  const void* ids = nullptr;  // int64 (ids_int32 false) or int32 indices
  bool ids_int32 = false;
  std::vector<int64_t> ids_dims;  // its shape: the output's leading dimensions, or 1 where broadcast
  const uint8_t* data = nullptr;  // [rows, n / 2]
  const float* scale = nullptr;   // [rows, n / block]
  int64_t rows = 0;
};

struct EmbedLayerNormArgs {
  EmbeddingLookup lookups[3];
  int count = 0;                   // 2 or 3 lookups
  std::vector<int64_t> lead_dims;  // the output's leading dimensions (broadcast of the ids')
  int64_t n = 0, block = 0;        // values per row (even), values per scale (divides n)
  const float* gamma = nullptr;    // [n]
  const float* beta = nullptr;     // [n], or null
  float epsilon = 1e-12f;
  float* out = nullptr;  // [prod(lead_dims), n]
};

// The first index of `lookup` outside [-rows, rows), as a message ("holds 40000 at position 17,
// outside [-30522, 30522)"), or "" when every index is in range.
std::string check_embedding_ids(const EmbeddingLookup& lookup);

// A lookup's table [rows >= 1, n / 2] and scale [rows, n / block] for hidden size n and block
// `block`: "" or what is wrong, the two called by `table_name` and `scale_name`. A dimension of -1
// (not known before run time) fits.
std::string check_embedding_table(int64_t n, int64_t block, const std::vector<int64_t>& table,
                                  const std::vector<int64_t>& scale, const std::string& table_name,
                                  const std::string& scale_name);

// Lookup t of args (args->n and args->block set; lead_dims sized to the ids' rank, all 1, before
// lookup 0): checks the shapes of its ids (args' rank, broadcasting with the lookups before it),
// table [rows, n / 2] and scale [rows, n / block], widens args->lead_dims by its ids and sets its
// ids_dims and rows. Returns "" or what is wrong, the inputs called by `names` (ids, table, scale)
// with `first_ids` the name of lookup 0's ids. Both front doors (the torch op and the ONNX Runtime
// node) check their inputs through it; the caller still sets the pointers and checks the indices.
std::string fit_embedding_lookup(EmbedLayerNormArgs* args, int t, const std::vector<int64_t>& ids,
                                 const std::vector<int64_t>& table,
                                 const std::vector<int64_t>& scale, const std::string (&names)[3],
                                 const std::string& first_ids);

// The whole op over the caller's threads. Returns the workers used.
int embed_layer_norm(CpuPath path, const EmbedLayerNormArgs& args, const Parallel& parallel);

namespace detail {
#if defined(BITMAPS_HAVE_X86_PATHS)
// One table row into out [n] (add: added to what out holds), as the portable loop of
// cpu_embed.cpp.
void dequantize_row_avx512(const uint8_t* data, const float* scale, int64_t n, int64_t block,
                           bool add, float* out);
#endif
}  // namespace detail

}  // namespace bitmaps::cpu
