// Attention of a decode step straight from the float16 KV cache: one new position per row, each query head
// against its key/value head's first `length` cached positions, in float32. Reading the cache once, in place,
// replaces converting every row's keys and values into a float32 copy (the most of a 16-row step's attention).
//
// Each (row, key/value head) is one task whose work depends only on its own query, cache slot and length, so a
// row's bits never depend on its batch, on the longest row beside it, or on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "vector.h"

namespace {

using namespace llmsite;

// e^x for x <= 0 (scores less their maximum), to ~1 ulp: x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor
// polynomial of degree 7, times 2^n built in the exponent bits. Below -87 it gives e^-87 (~1.6e-38), not 0.
inline f32x16 exp_nonpositive(f32x16 x) {
  x = x < -87.0f ? f32x16{} - 87.0f : x;
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

// q (B, H, hd) float32; k_cache, v_cache (slots, K, max positions, hd) float16; slots, lengths (B,) int64: row b reads
// positions [0, lengths[b]) of slot slots[b]. Returns (B, H, hd) float32: softmax(q k^T * scale) v per query head,
// query head h reading key/value head h / (H / K).
at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& slots_in, const at::Tensor& lengths_in, double scale) {
  TORCH_CHECK(q_in.dim() == 3 && q_in.scalar_type() == at::kFloat, "decode_attention: q must be (B, H, hd) float32");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.scalar_type() == at::kHalf && k_cache.sizes() == v_cache.sizes() &&
                  v_cache.scalar_type() == at::kHalf && k_cache.stride(3) == 1 && v_cache.stride(3) == 1 &&
                  k_cache.strides() == v_cache.strides(),
              "decode_attention: caches must be (slots, K, positions, hd) float16 with rows of hd contiguous values");
  const int64_t B = q_in.size(0), H = q_in.size(1), hd = q_in.size(2), K = k_cache.size(1);
  TORCH_CHECK(k_cache.size(3) == hd && hd % 16 == 0 && H % K == 0, "decode_attention: head sizes do not match");
  const at::Tensor q = q_in.contiguous();
  const at::Tensor slots = slots_in.to(at::kLong).contiguous(), lengths = lengths_in.to(at::kLong).contiguous();
  TORCH_CHECK(slots.numel() == B && lengths.numel() == B, "decode_attention: one slot and one length per row");
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* length = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(0 <= slot[b] && slot[b] < k_cache.size(0) && 1 <= length[b] && length[b] <= k_cache.size(2),
                "decode_attention: row ", b, " reads slot ", slot[b], " over ", length[b], " positions");
  at::Tensor out = at::empty({B, H, hd}, q.options());
  const int64_t rep = H / K, chunks = hd / 16;
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const at::Half* kp = k_cache.data_ptr<at::Half>();
  const at::Half* vp = v_cache.data_ptr<at::Half>();
  const int64_t s_slot = k_cache.stride(0), s_head = k_cache.stride(1), s_pos = k_cache.stride(2);
  const float alpha = static_cast<float>(scale);
  at::parallel_for(0, B * K, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scores;  // (rep, padded length): the scores, then the weights, of each query head
    std::vector<f32x16> acc(rep * chunks), row(chunks);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / K, g = t % K, n = length[b], padded = (n + 15) / 16 * 16;
      const at::Half* keys = kp + slot[b] * s_slot + g * s_head;
      const at::Half* values = vp + slot[b] * s_slot + g * s_head;
      const float* qg = qp + (b * H + g * rep) * hd;  // the group's rep query heads, one after another
      scores.assign(rep * padded, 0.0f);
      for (int64_t s = 0; s < n; ++s) {  // each key converted once for the group's query heads
        for (int64_t c = 0; c < chunks; ++c) row[c] = load_half16(keys + s * s_pos + 16 * c);
        for (int64_t h = 0; h < rep; ++h) {
          f32x16 dot{};
          for (int64_t c = 0; c < chunks; ++c) dot = fma16(load16(qg + h * hd + 16 * c), row[c], dot);
          scores[h * padded + s] = lane_sum(dot) * alpha;
        }
      }
      for (int64_t h = 0; h < rep; ++h) {  // softmax over the row's n positions
        float* w = scores.data() + h * padded;
        float top = -INFINITY;
        for (int64_t s = 0; s < n; ++s) top = std::max(top, w[s]);
        f32x16 total{};
        for (int64_t s = 0; s < padded; s += 16) {
          f32x16 e = exp_nonpositive(load16(w + s) - top);
          for (int64_t i = n - s; i < 16; ++i) e[i] = 0.0f;  // past the row's length
          std::memcpy(w + s, &e, sizeof e);
          total += e;
        }
        const float inverse = 1.0f / lane_sum(total);
        for (int64_t s = 0; s < n; ++s) w[s] *= inverse;
      }
      for (auto& a : acc) a = f32x16{};
      for (int64_t s = 0; s < n; ++s) {  // each value converted once for the group's query heads
        for (int64_t c = 0; c < chunks; ++c) row[c] = load_half16(values + s * s_pos + 16 * c);
        for (int64_t h = 0; h < rep; ++h) {
          const f32x16 p = f32x16{} + scores[h * padded + s];
          for (int64_t c = 0; c < chunks; ++c) acc[h * chunks + c] = fma16(p, row[c], acc[h * chunks + c]);
        }
      }
      std::memcpy(op + (b * H + g * rep) * hd, acc.data(), rep * hd * sizeof(float));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmsite, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor lengths, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmsite, CPU, m) { m.impl("decode_attention", decode_attention); }
