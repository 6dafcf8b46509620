// The feed-forward's gate: silu(gate) * up over the fused gate/up projection's float32 rows, in one pass (torch ran
// it as a split, a silu and a product, three calls a layer). silu(x) = x / (1 + e^-x), e^x by vector.h's exp16.
// Each row is computed alone, in a fixed order, so its bits do not depend on the other rows or the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "vector.h"

namespace {

using namespace llmsite;

// gate_up (..., 2F) float32, gate then up -> (..., F) float32.
at::Tensor silu_mul(const at::Tensor& gate_up_in) {
  TORCH_CHECK(gate_up_in.scalar_type() == at::kFloat, "silu_mul: gate_up must be float32");
  const int64_t F = gate_up_in.size(-1) / 2;
  TORCH_CHECK(gate_up_in.size(-1) == 2 * F && F % 16 == 0, "silu_mul: a gate and an up of a multiple of 16 values");
  const at::Tensor gate_up = gate_up_in.contiguous();
  std::vector<int64_t> out_shape(gate_up.sizes().begin(), gate_up.sizes().end());
  out_shape.back() = F;
  at::Tensor out = at::empty(out_shape, gate_up.options());
  const int64_t rows = F ? gate_up.numel() / (2 * F) : 0;
  const float* in = gate_up.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t i = 0; i < F; i += 16) {
        const f32x16 gate = load16(in + r * 2 * F + i), up = load16(in + r * 2 * F + F + i);
        const f32x16 y = gate / (1.0f + exp16(-gate)) * up;
        std::memcpy(op + r * F + i, &y, sizeof y);
      }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmsite, m) { m.def("silu_mul(Tensor gate_up) -> Tensor"); }

TORCH_LIBRARY_IMPL(llmsite, CPU, m) { m.impl("silu_mul", silu_mul); }
