// IEEE binary16 <-> binary32 conversion in plain C++, for the scalar CPU path.
//
// The SIMD paths use F16C / AVX-512 conversion instructions; this header gives the scalar path the
// same results without any instruction-set extension: half -> float is exact, float -> half rounds
// to nearest, ties to even, overflows to infinity and keeps NaN a NaN (what torch's `.to(float16)`
// does, so the fp16 outputs of every path agree bit for bit).
#pragma once

#include <cstdint>
#include <cstring>

namespace bitmaps::cpu {

inline uint32_t float_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in float32.
    const float magnitude = static_cast<float>(mantissa) * bits_float(0x33800000u);  // 2^-24
    return bits_float(float_bits(magnitude) | sign);
  }
  if (exponent == 0x1F) return bits_float(sign | 0x7F800000u | (mantissa << 13));  // inf / NaN
  return bits_float(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

inline uint16_t float_to_half(float v) {
  uint32_t u = float_bits(v);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7FFFFFFFu;
  if (u >= 0x7F800000u) {  // inf stays inf, NaN stays a (quiet) NaN
    const auto nan = static_cast<uint16_t>(0x7E00u | ((u >> 13) & 0x3FFu));
    return sign | (u > 0x7F800000u ? nan : static_cast<uint16_t>(0x7C00u));
  }
  if (u >= 0x47800000u) return sign | 0x7C00u;  // >= 65536: infinity
  if (u < 0x38800000u) {
    // Below the smallest normal half (2^-14): let the FPU round. Adding 0.5 puts the value's
    // half-subnormal bits (units of 2^-24) in the low mantissa bits of the sum, rounded to even.
    const float sum = bits_float(u) + 0.5f;
    return sign | static_cast<uint16_t>(float_bits(sum) - 0x3F000000u);
  }
  // Normal range: rebias the exponent, then round the 13 dropped mantissa bits to nearest even.
  // A carry out of the mantissa correctly bumps the exponent (65520 and up become infinity).
  const uint32_t odd = (u >> 13) & 1u;
  u += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + odd;
  return sign | static_cast<uint16_t>(u >> 13);
}

}  // namespace bitmaps::cpu
