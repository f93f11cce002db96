// The AVX-512 row dequantization of cpu_embed.h: per block of the row, the 16 values a nibble can
// stand for are scaled once ((q - 8) * scale, the same float32 products as the portable loop) and
// the nibbles then pick from them with VPERMPS, two interleaving permutes putting the low and high
// nibbles' values in row order.
#include "kernels/cpu_features.h"

#if defined(BITMAPS_HAVE_X86_PATHS)

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own AVX-512 headers (_mm512_undefined_*, inlined here): a known false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include "kernels/cpu_embed.h"

#define BITMAPS_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))

namespace bitmaps::cpu::detail {

BITMAPS_AVX512 void dequantize_row_avx512(const uint8_t* data, const float* scale, int64_t n,
                                          int64_t block, bool add, float* out) {
  const __m512 levels = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  // output lanes 0-15: lo0 hi0 lo1 hi1 ... lo7 hi7; lanes 16-31: lo8 hi8 ... lo15 hi15
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t g = 0; g < n / block; ++g) {
    const __m512 table = _mm512_mul_ps(levels, _mm512_set1_ps(scale[g]));
    const uint8_t* d = data + g * (block / 2);
    float* o = out + g * block;
    int64_t b = 0;
    for (; b + 16 <= block / 2; b += 16) {  // 16 bytes -> 32 values
      const __m512i bytes =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + b)));
      const __m512 lo = _mm512_permutexvar_ps(bytes, table);  // VPERMPS reads the low 4 bits
      const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
      __m512 v0 = _mm512_permutex2var_ps(lo, first, hi);
      __m512 v1 = _mm512_permutex2var_ps(lo, second, hi);
      if (add) {
        v0 = _mm512_add_ps(_mm512_loadu_ps(o + 2 * b), v0);
        v1 = _mm512_add_ps(_mm512_loadu_ps(o + 2 * b + 16), v1);
      }
      _mm512_storeu_ps(o + 2 * b, v0);
      _mm512_storeu_ps(o + 2 * b + 16, v1);
    }
    for (; b < block / 2; ++b) {  // blocks of fewer than 32 values
      const float lo = static_cast<float>((d[b] & 15) - 8) * scale[g];
      const float hi = static_cast<float>((d[b] >> 4) - 8) * scale[g];
      o[2 * b] = add ? o[2 * b] + lo : lo;
      o[2 * b + 1] = add ? o[2 * b + 1] + hi : hi;
    }
  }
}

}  // namespace bitmaps::cpu::detail

#endif  // BITMAPS_HAVE_X86_PATHS
