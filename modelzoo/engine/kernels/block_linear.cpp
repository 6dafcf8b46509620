// Matrix products straight from a GGUF file's own blocks: y = x W^T with float32 activations, the weights kept as
// Q4_1 or Q8_0 blocks of 32 and dequantized exactly (in float32) in registers. A one-stream decode step streams
// every weight from memory once; these blocks are 5 bits (Q4_1) or 8.5 bits (Q8_0) a weight, against float16's 16.
//
// Every output row is computed by the same code whatever the number of rows (rows only share the decoded
// weights), and the build turns off floating-point contraction, so a row's bits never depend on its batch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#include "vector.h"

namespace {

using namespace llmsite;

constexpr int64_t kBlock = 32;
constexpr int64_t kQ4_1Bytes = 20;  // float16 d, float16 m, 16 bytes of 4-bit values: w = d * q + m
constexpr int64_t kQ8_0Bytes = 34;  // float16 d, 32 signed bytes: w = d * q
constexpr int64_t kRowsAtOnce = 8;  // rows that share one pass over the weights

inline float half_at(const uint8_t* p) {
  _Float16 h;
  std::memcpy(&h, p, 2);
  return static_cast<float>(h);
}

// Asks for the weight row kPrefetchRows rows ahead of `row` (row_bytes long): a row is computed faster than memory
// delivers it unasked.
constexpr int64_t kPrefetchRows = 8;
inline void prefetch_ahead(const uint8_t* row, int64_t row_bytes) {
  const uint8_t* ahead = row + kPrefetchRows * row_bytes;
  for (int64_t i = 0; i < row_bytes; i += 64) __builtin_prefetch(ahead + i);
}


// The 32 weights of one block, exactly as float32: Q4_1's d * q + m (d * q is exact, so one rounding: the bits of a
// float32 dequantizer's or of a fused multiply-add), Q8_0's d * q (exact).
inline void q4_1_block(const uint8_t* block, f32x16& lo, f32x16& hi) {
  const f32x16 d = f32x16{} + half_at(block), m = f32x16{} + half_at(block + 2);
  u8x16 qs;
  std::memcpy(&qs, block + 4, 16);
  lo = to_float(qs & 15) * d + m;  // values 0..15 of the block
  hi = to_float(qs >> 4) * d + m;  // values 16..31
}

inline void q8_0_block(const uint8_t* block, f32x16& lo, f32x16& hi) {
  const f32x16 d = f32x16{} + half_at(block);
  u8x16 q0, q1;  // signed bytes, read as unsigned ones offset by 128 (the compiler vectorizes those)
  std::memcpy(&q0, block + 2, 16);
  std::memcpy(&q1, block + 18, 16);
  lo = d * (to_float(q0 ^ 0x80) - 128.0f);
  hi = d * (to_float(q1 ^ 0x80) - 128.0f);
}

// Rows [0, R) of x (stride ldx) times weight rows [n0, n1) of w (Bytes per block, nb blocks a row).
template <int R, int64_t Bytes, void (*Dequantize)(const uint8_t*, f32x16&, f32x16&)>
void rows(const float* x, int64_t ldx, int64_t nb, const uint8_t* w, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = w + n * nb * Bytes;
    prefetch_ahead(row, nb * Bytes);
    f32x16 acc_lo[R] = {}, acc_hi[R] = {};  // two sums a row: half the dependent additions each
    for (int64_t b = 0; b < nb; ++b) {
      f32x16 lo, hi;
      Dequantize(row + b * Bytes, lo, hi);
      for (int r = 0; r < R; ++r) {
        const float* xb = x + r * ldx + b * kBlock;
        acc_lo[r] = fma16(load16(xb), lo, acc_lo[r]);
        acc_hi[r] = fma16(load16(xb + 16), hi, acc_hi[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[r * ldy + n] = lane_sum(acc_lo[r] + acc_hi[r]);
  }
}

using RowsFn = void (*)(const float*, int64_t, int64_t, const uint8_t*, float*, int64_t, int64_t, int64_t);

template <int64_t Bytes, void (*Dequantize)(const uint8_t*, f32x16&, f32x16&)>
constexpr RowsFn kRows[kRowsAtOnce] = {rows<1, Bytes, Dequantize>, rows<2, Bytes, Dequantize>, rows<3, Bytes, Dequantize>,
                                       rows<4, Bytes, Dequantize>, rows<5, Bytes, Dequantize>, rows<6, Bytes, Dequantize>,
                                       rows<7, Bytes, Dequantize>, rows<8, Bytes, Dequantize>};

constexpr int64_t kChunk = 64;  // weight rows dequantized at a time by block_matmul

// x w^T into out by oneDNN's float32 product (torch's mkldnn::_linear_pointwise, what torch.compile's CPU code
// calls): it takes the CPU's AVX-512 units wherever they are, where MKL's sgemm, torch's mm, ran its AVX2 code on an
// AMD Zen 5 (100 against 180 GFLOP/s a core). torch's mm where oneDNN is not built in. Called inside a parallel
// region, both compute on the calling thread alone.
void chunk_product(const at::Tensor& x, const at::Tensor& w, at::Tensor& out) {
  using Linear = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>);
  static const std::optional<c10::OperatorHandle> onednn =
      c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  if (onednn) {
    out.copy_(onednn->typed<Linear>().call(x, w, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt));
  } else {
    at::mm_out(out, x, w.t());
  }
}

// The checks every entry point makes; returns the number of blocks a weight row holds.
int64_t blocks_per_row(const at::Tensor& blocks, int64_t kind, int64_t in_features) {
  TORCH_CHECK(kind == 0 || kind == 1, "llmsite: kind must be 0 (Q4_1) or 1 (Q8_0)");
  TORCH_CHECK(blocks.scalar_type() == at::kByte && blocks.dim() == 2 && blocks.is_contiguous(),
              "llmsite: blocks must be a contiguous (N, bytes) uint8 tensor");
  const int64_t nb = in_features / kBlock;
  TORCH_CHECK(in_features % kBlock == 0 && blocks.size(1) == nb * (kind == 0 ? kQ4_1Bytes : kQ8_0Bytes),
              "llmsite: ", in_features, " inputs do not match blocks of ", blocks.size(1), " bytes a row");
  return nb;
}

// Weight rows [n0, n1) as float32 into out (n1 - n0, nb * 32).
void dequantize_rows(const uint8_t* w, int64_t kind, int64_t nb, int64_t n0, int64_t n1, float* out) {
  const int64_t bytes = kind == 0 ? kQ4_1Bytes : kQ8_0Bytes;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t b = 0; b < nb; ++b) {
      f32x16 lo, hi;
      (kind == 0 ? q4_1_block : q8_0_block)(w + (n * nb + b) * bytes, lo, hi);
      float* o = out + (n - n0) * nb * kBlock + b * kBlock;
      std::memcpy(o, &lo, 64);
      std::memcpy(o + 16, &hi, 64);
    }
}

// y = x W^T for decode steps: x (..., K) float32, blocks (N, K / 32 * block bytes); each row alike in any batch.
at::Tensor block_linear(const at::Tensor& x_in, const at::Tensor& blocks, int64_t kind) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "block_linear: x must be float32");
  const int64_t K = x_in.size(-1), N = blocks.size(0), nb = blocks_per_row(blocks, kind, K);
  const at::Tensor x = x_in.reshape({-1, K}).contiguous();
  const int64_t M = x.size(0);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y.view(out_shape);
  const float* xp = x.data_ptr<float>();
  const RowsFn* table = kind == 0 ? kRows<kQ4_1Bytes, q4_1_block> : kRows<kQ8_0Bytes, q8_0_block>;
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t r0 = 0; r0 < M; r0 += kRowsAtOnce) {
      const int64_t count = std::min(kRowsAtOnce, M - r0);
      table[count - 1](xp + r0 * K, K, nb, wp, yp + r0 * N, N, n0, n1);
    }
  });
  return y.view(out_shape);
}

// y = x W^T for many positions at once (a prompt): each chunk of kChunk weight rows is dequantized and multiplied
// by one single-threaded matrix product (chunk_product), so the bits depend neither on the thread count nor on how chunks are shared.
at::Tensor block_matmul(const at::Tensor& x_in, const at::Tensor& blocks, int64_t kind) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "block_matmul: x must be float32");
  const int64_t K = x_in.size(-1), N = blocks.size(0), nb = blocks_per_row(blocks, kind, K);
  const at::Tensor x = x_in.reshape({-1, K}).contiguous();
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty({x.size(0), N}, x.options());
  if (y.numel() == 0) return y.view(out_shape);
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  at::parallel_for(0, (N + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    c10::InferenceMode guard;  // the caller's mode does not reach the pool's threads; nothing here is differentiated
    at::Tensor w = at::empty({kChunk, K}, x.options());
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t n0 = c * kChunk, n1 = std::min(N, n0 + kChunk);
      dequantize_rows(wp, kind, nb, n0, n1, w.data_ptr<float>());
      at::Tensor out = y.narrow(1, n0, n1 - n0);
      chunk_product(x, w.narrow(0, 0, n1 - n0), out);
    }
  });
  return y.view(out_shape);
}

// The weight as float32 (N, in_features): exactly the values the products use.
at::Tensor block_dequantize(const at::Tensor& blocks, int64_t kind, int64_t in_features) {
  const int64_t nb = blocks_per_row(blocks, kind, in_features), N = blocks.size(0);
  at::Tensor w = at::empty({N, in_features}, at::kFloat);
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  float* out = w.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) { dequantize_rows(wp, kind, nb, n0, n1, out + n0 * in_features); });
  return w;
}

}  // namespace

TORCH_LIBRARY(llmsite, m) {
  m.def("block_linear(Tensor x, Tensor blocks, int kind) -> Tensor");
  m.def("block_matmul(Tensor x, Tensor blocks, int kind) -> Tensor");
  m.def("block_dequantize(Tensor blocks, int kind, int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmsite, CPU, m) {
  m.impl("block_linear", block_linear);
  m.impl("block_matmul", block_matmul);
  m.impl("block_dequantize", block_dequantize);
}
