// What the NEON kernels share (cpu_kernels_neon.cpp, cpu_attention_neon.cpp,
// cpu_attention_int8_neon.cpp): the dot-product target attribute, the unrolling pragma, and loads
// and stores of a row's last 1-3 floats (NEON has no masked loads). Include only where
// BITMAPS_HAVE_NEON_PATH is defined (AArch64).
#pragma once

#include <arm_neon.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

// Functions that use UDOT / SDOT (Armv8.2 dot-product extension), chosen at run time from
// HWCAP_ASIMDDP (cpu_has_neon_dotprod): only they carry the attribute, so the library runs on every
// Armv8-A CPU.
#if defined(__clang__)
#define BITMAPS_DOTPROD __attribute__((target("dotprod")))
#else
#define BITMAPS_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#define BITMAPS_NEON_INLINE __attribute__((always_inline)) inline
// The loops over a block's rows and vectors must unroll completely, at -O2 too, so the
// accumulators live in registers (GCC 12 at -O2 keeps them in memory otherwise).
#define BITMAPS_UNROLL _Pragma("GCC unroll 16")

namespace bitmaps::cpu::detail {

// All ones in lanes [0, n), zero in the others.
BITMAPS_NEON_INLINE uint32x4_t valid_lanes(int64_t n) {
  const uint32_t ids[4] = {0, 1, 2, 3};
  return vcltq_u32(vld1q_u32(ids), vdupq_n_u32(static_cast<uint32_t>(n)));
}

// The first n (1..4) floats at p, the other lanes zero; and their store. (n is clamped to [0, 4]
// so the compiler sees the copy's bound.)
BITMAPS_NEON_INLINE float32x4_t load_part(const float* p, int64_t n) {
  if (n >= 4) return vld1q_f32(p);
  float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  std::memcpy(buf, p, static_cast<size_t>(std::clamp<int64_t>(n, 0, 4)) * sizeof(float));
  return vld1q_f32(buf);
}
BITMAPS_NEON_INLINE void store_part(float* p, int64_t n, float32x4_t v) {
  if (n >= 4) return vst1q_f32(p, v);
  float buf[4];
  vst1q_f32(buf, v);
  std::memcpy(p, buf, static_cast<size_t>(std::clamp<int64_t>(n, 0, 4)) * sizeof(float));
}

}  // namespace bitmaps::cpu::detail
