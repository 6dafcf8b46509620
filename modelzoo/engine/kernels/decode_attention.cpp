// Attention of a decode step straight from the float16 KV cache: one new position per row, each query head
// against its key/value head's cached positions, in float32. Reading the cache once, in place, replaces converting
// every row's keys and values into a float32 copy (the most of a 16-row step's attention); the rotary embedding and
// the cache write ride along, so a layer's attention is one call from its q/k/v projection to its heads' outputs.
//
// Each (row, key/value head) is one task whose work depends only on its own projection, cache slot and position, so
// a row's bits never depend on its batch, on the longest row beside it, or on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "vector.h"

namespace {

using namespace llmsite;

// The rotary embedding of one head as torch's apply_rope computes it: x * cos + roll(x, hd / 2) * signed_sin, each
// product and the sum rounded as written (the same bits).
inline void rotate(const float* x, const float* cos, const float* sin, int64_t hd, float* out) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < hd; ++i) out[i] = x[i] * cos[i] + x[i < half ? i + half : i - half] * sin[i];
}

inline void store_half(const float* x, int64_t n, at::Half* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<at::Half>(x[i]);  // round to nearest even, as .to(float16)
}

// One decode step's attention for every row, from its q/k/v projection to the heads' outputs, in one call (it was ~20
// small operations a layer): qkv (B, [1,] (H + 2K) * hd) float32, H query heads then K key and K value heads; cos,
// signed sin (B, [1, 1,] hd) float32 (model.rope_cos_sin). Row b rotates its q and k heads, writes k and v at position
// positions[b] of cache slot slots[b] (float16, rounded as .to(float16)), and attends over that slot's positions
// [0, positions[b]]. k_cache, v_cache (slots, K, max positions, hd) float16. Returns (B, [1,] H * hd) float32:
// softmax(q k^T * scale) v per query head, query head h reading key/value head h / (H / K).
at::Tensor decode_attention(const at::Tensor& qkv_in, const at::Tensor& cos_in, const at::Tensor& sin_in,
                            at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots_in,
                            const at::Tensor& positions_in, double scale) {
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.scalar_type() == at::kHalf && k_cache.sizes() == v_cache.sizes() &&
                  v_cache.scalar_type() == at::kHalf && k_cache.stride(3) == 1 && v_cache.stride(3) == 1 &&
                  k_cache.strides() == v_cache.strides(),
              "decode_attention: caches must be (slots, K, positions, hd) float16 with rows of hd contiguous values");
  const int64_t K = k_cache.size(1), hd = k_cache.size(3);
  TORCH_CHECK(hd % 16 == 0, "decode_attention: heads of a multiple of 16 values");
  TORCH_CHECK(qkv_in.dim() >= 2 && qkv_in.scalar_type() == at::kFloat && qkv_in.size(-1) % hd == 0 &&
                  qkv_in.numel() == qkv_in.size(0) * qkv_in.size(-1),
              "decode_attention: qkv must be (B, [1,] heads * hd) float32");
  const int64_t B = qkv_in.size(0), H = qkv_in.size(-1) / hd - 2 * K;
  TORCH_CHECK(H > 0 && H % K == 0, "decode_attention: ", qkv_in.size(-1) / hd, " heads do not match ", K, " key heads");
  TORCH_CHECK(cos_in.scalar_type() == at::kFloat && sin_in.scalar_type() == at::kFloat && cos_in.numel() == B * hd &&
                  sin_in.numel() == B * hd, "decode_attention: cos and sin must be (B, hd) float32");
  const at::Tensor qkv = qkv_in.contiguous(), cos = cos_in.contiguous(), sin = sin_in.contiguous();
  const at::Tensor slots = slots_in.to(at::kLong).contiguous(), positions = positions_in.to(at::kLong).contiguous();
  TORCH_CHECK(slots.numel() == B && positions.numel() == B, "decode_attention: one slot and one position per row");
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* position = positions.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(0 <= slot[b] && slot[b] < k_cache.size(0) && 0 <= position[b] && position[b] < k_cache.size(2),
                "decode_attention: row ", b, " writes slot ", slot[b], " at position ", position[b]);
  std::vector<int64_t> out_shape(qkv_in.sizes().begin(), qkv_in.sizes().end());  // qkv's shape, H * hd wide
  out_shape.back() = H * hd;
  at::Tensor out = at::empty(out_shape, qkv.options());
  const int64_t rep = H / K, chunks = hd / 16, width = (H + 2 * K) * hd;
  const float* xp = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::Half* kp = k_cache.data_ptr<at::Half>();
  at::Half* vp = v_cache.data_ptr<at::Half>();
  const int64_t s_slot = k_cache.stride(0), s_head = k_cache.stride(1), s_pos = k_cache.stride(2);
  const float alpha = static_cast<float>(scale);
  at::parallel_for(0, B * K, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores, q(rep * hd), rotated(hd);  // scores: (rep, padded length), then the weights
    std::vector<f32x16> acc(rep * chunks), row(chunks);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / K, g = t % K, n = position[b] + 1, padded = (n + 15) / 16 * 16;
      const float* x = xp + b * width;
      const float *cos_b = cp + b * hd, *sin_b = sp + b * hd;
      at::Half* keys = kp + slot[b] * s_slot + g * s_head;
      at::Half* values = vp + slot[b] * s_slot + g * s_head;
      rotate(x + (H + g) * hd, cos_b, sin_b, hd, rotated.data());  // this step's key and value, into the cache
      store_half(rotated.data(), hd, keys + position[b] * s_pos);
      store_half(x + (H + K + g) * hd, hd, values + position[b] * s_pos);
      for (int64_t h = 0; h < rep; ++h) rotate(x + (g * rep + h) * hd, cos_b, sin_b, hd, q.data() + h * hd);
      scores.assign(rep * padded, 0.0f);
      for (int64_t s = 0; s < n; ++s) {  // each key converted once for the group's query heads
        for (int64_t i = 0; i < chunks; ++i) row[i] = load_half16(keys + s * s_pos + 16 * i);
        for (int64_t h = 0; h < rep; ++h) {
          f32x16 dot{};
          for (int64_t i = 0; i < chunks; ++i) dot = fma16(load16(q.data() + h * hd + 16 * i), row[i], dot);
          scores[h * padded + s] = lane_sum(dot) * alpha;
        }
      }
      for (int64_t h = 0; h < rep; ++h) {  // softmax over the row's n positions
        float* w = scores.data() + h * padded;
        float top = -INFINITY;
        for (int64_t s = 0; s < n; ++s) top = std::max(top, w[s]);
        f32x16 total{};
        for (int64_t s = 0; s < padded; s += 16) {
          f32x16 e = exp16(load16(w + s) - top);
          for (int64_t i = n - s; i < 16; ++i) e[i] = 0.0f;  // past the row's length
          std::memcpy(w + s, &e, sizeof e);
          total += e;
        }
        const float inverse = 1.0f / lane_sum(total);
        for (int64_t s = 0; s < n; ++s) w[s] *= inverse;
      }
      for (auto& a : acc) a = f32x16{};
      for (int64_t s = 0; s < n; ++s) {  // each value converted once for the group's query heads
        for (int64_t i = 0; i < chunks; ++i) row[i] = load_half16(values + s * s_pos + 16 * i);
        for (int64_t h = 0; h < rep; ++h) {
          const f32x16 p = f32x16{} + scores[h * padded + s];
          for (int64_t i = 0; i < chunks; ++i) acc[h * chunks + i] = fma16(p, row[i], acc[h * chunks + i]);
        }
      }
      std::memcpy(op + (b * H + g * rep) * hd, acc.data(), rep * hd * sizeof(float));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmsite, m) {
  m.def(
      "decode_attention(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, "
      "Tensor positions, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmsite, CPU, m) { m.impl("decode_attention", decode_attention); }
