// Vector helpers of our CPU kernels: 16 float32 lanes as a GCC/Clang vector type (one AVX-512 register, two AVX2
// ones, or four SSE ones: the compiler splits them), with fused multiply-adds spelled out. The kernels are built with
// -ffp-contract=off, so every multiply and add is rounded as written and each row gets the same instructions.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace llmsite {

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The 16 lanes summed in one fixed order: a tree, lane i plus lane i + 8, then i + 4, i + 2, i + 1.
inline float lane_sum(f32x16 v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 0, 0, 0, 0, 0, 0, 0);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  v += __builtin_shufflevector(v, v, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  return v[0];
}

// a * b + c rounded once where the CPU has fused multiply-add; spelled out so that every row gets the same
// instructions (the build turns off the compiler's own contraction, which may differ between loops).
inline f32x16 fma16(f32x16 a, f32x16 b, f32x16 c) {
#if defined(__AVX512F__)
  return (f32x16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  typedef float f32x8 __attribute__((vector_size(32)));
  f32x8 a2[2], b2[2], c2[2], r[2];
  std::memcpy(a2, &a, 64);
  std::memcpy(b2, &b, 64);
  std::memcpy(c2, &c, 64);
  for (int i = 0; i < 2; ++i) r[i] = (f32x8)_mm256_fmadd_ps((__m256)a2[i], (__m256)b2[i], (__m256)c2[i]);
  f32x16 out;
  std::memcpy(&out, r, 64);
  return out;
#else
  return a * b + c;
#endif
}

// 16 float16 values (raw bits) to float32: exact. The compiler does not vectorize a conversion of _Float16 vectors.
inline f32x16 load_half16(const void* p) {
#if defined(__AVX512F__)
  return (f32x16)_mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
#elif defined(__F16C__)
  typedef float f32x8 __attribute__((vector_size(32)));
  const f32x8 halves[2] = {(f32x8)_mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p))),
                           (f32x8)_mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p) + 1))};
  f32x16 out;
  std::memcpy(&out, halves, 64);
  return out;
#else
  _Float16 h[16];
  std::memcpy(h, p, sizeof h);
  f32x16 out;
  for (int i = 0; i < 16; ++i) out[i] = static_cast<float>(h[i]);
  return out;
#endif
}

// Bytes to float32 by way of int32 (a direct conversion is not vectorized by the compiler).
template <typename V>
inline f32x16 to_float(V v) {
  return __builtin_convertvector(__builtin_convertvector(v, i32x16), f32x16);
}

// e^x to ~1 ulp, for x clamped to [-87, 88] (e^-87 ~ 1.6e-38, not 0; e^88 ~ 1.7e38, not infinity): x = n ln2 + r,
// |r| <= ln2 / 2, e^r by its Taylor polynomial of degree 7, times 2^n built in the exponent bits.
inline f32x16 exp16(f32x16 x) {
  x = x < -87.0f ? f32x16{} - 87.0f : x;
  x = x > 88.0f ? f32x16{} + 88.0f : x;
  const f32x16 magic = f32x16{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const f32x16 n = (x * 1.44269504f + magic) - magic;
  const f32x16 r = (x - n * 0.693145752f) - n * 1.42860677e-6f;  // ln 2 in two parts: n * hi is exact
  f32x16 p = f32x16{} + 1.98412698e-4f;  // 1/5040
  p = fma16(p, r, f32x16{} + 1.38888889e-3f);
  p = fma16(p, r, f32x16{} + 8.33333333e-3f);
  p = fma16(p, r, f32x16{} + 4.16666667e-2f);
  p = fma16(p, r, f32x16{} + 1.66666667e-1f);
  p = fma16(p, r, f32x16{} + 0.5f);
  p = fma16(p, r, f32x16{} + 1.0f);
  p = fma16(p, r, f32x16{} + 1.0f);
  const i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;
  f32x16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace llmsite
