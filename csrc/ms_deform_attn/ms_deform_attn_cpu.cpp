// CPU entry points of multi-scale deformable attention: allocation, dtype dispatch, threading
// (at::parallel_for) and the choice of instruction set. The kernels are in
// ms_deform_attn_cpu_kernel.h, compiled here once per instruction set; the sampling math they
// share with CUDA is in ms_deform_attn_sampling.h.
//
// Shapes: value (N, S, M, D); sampling_locations (N, Lq, M, L, P, 2);
// attention_weights (N, Lq, M, L, P); output (N, Lq, M * D).
#include "ms_deform_attn.h"
#include "ms_deform_attn_sampling.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#define DDETR_ISA generic
#include "ms_deform_attn_cpu_kernel.h"
#undef DDETR_ISA

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DDETR_X86_CLONES 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define DDETR_ISA avx2
#include "ms_deform_attn_cpu_kernel.h"
#undef DDETR_ISA
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
#define DDETR_ISA avx512
#include "ms_deform_attn_cpu_kernel.h"
#undef DDETR_ISA
#pragma GCC pop_options
#endif

namespace deformable_detr {
namespace {

enum class Isa { kGeneric, kAvx2, kAvx512 };

// The widest instruction set this CPU has, capped by ATEN_CPU_CAPABILITY (the variable PyTorch
// reads for its own kernels: "default", "avx2" or "avx512"), so every variant can be tested on one
// machine.
Isa detect_isa() {
#ifdef DDETR_X86_CLONES
  __builtin_cpu_init();
  Isa best = Isa::kGeneric;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    best = Isa::kAvx512;
  }
  const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
  if (cap != nullptr) {
    if (std::strcmp(cap, "default") == 0) return Isa::kGeneric;
    if (std::strcmp(cap, "avx2") == 0 && best == Isa::kAvx512) return Isa::kAvx2;
  }
  return best;
#else
  return Isa::kGeneric;
#endif
}

Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

// The forward and backward kernels of one instruction set and head dim, as function pointers, so
// that one dispatch (below) serves both. Their types are the kernels' own signatures.
template <typename scalar_t, typename loc_t, typename acc_t>
struct Kernels {
  decltype(&generic::forward_rows<scalar_t, loc_t, acc_t, 0>) forward_rows;
  decltype(&generic::backward_task<scalar_t, loc_t, acc_t, 0>) backward_task;
};

template <typename scalar_t, typename loc_t, typename acc_t, int kD>
Kernels<scalar_t, loc_t, acc_t> isa_kernels() {
  switch (cpu_isa()) {
#ifdef DDETR_X86_CLONES
    case Isa::kAvx512:
      return {avx512::forward_rows<scalar_t, loc_t, acc_t, kD>,
              avx512::backward_task<scalar_t, loc_t, acc_t, kD>};
    case Isa::kAvx2:
      return {avx2::forward_rows<scalar_t, loc_t, acc_t, kD>,
              avx2::backward_task<scalar_t, loc_t, acc_t, kD>};
#endif
    default:
      return {generic::forward_rows<scalar_t, loc_t, acc_t, kD>,
              generic::backward_task<scalar_t, loc_t, acc_t, kD>};
  }
}

// The kernels of the CPU's instruction set, with D fixed at compile time for the common head dims
// so that accumulators stay in registers; any other D runs the general loop.
template <typename scalar_t, typename loc_t, typename acc_t>
Kernels<scalar_t, loc_t, acc_t> cpu_kernels(int64_t D) {
  switch (D) {
    case 32:
      return isa_kernels<scalar_t, loc_t, acc_t, 32>();
    case 64:
      return isa_kernels<scalar_t, loc_t, acc_t, 64>();
    default:
      return isa_kernels<scalar_t, loc_t, acc_t, 0>();
  }
}

// Forward over all N * Lq output rows, one image at a time: the threads share one image's value
// (23 MB in float32 at 800x1333, within a 32 MB L3 such as these machines') instead of each
// sampling its own, so that per-image time does not grow with the batch.
template <typename scalar_t, typename loc_t>
void forward_cpu(const Inputs& in, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const Sizes& s = in.s;
  const InputPointers<scalar_t, loc_t> p(in);
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const std::vector<scalar_t> zeros(s.D, scalar_t(0));
  const auto forward_rows = cpu_kernels<scalar_t, loc_t, acc_t>(s.D).forward_rows;
  for (int64_t n = 0; n < s.N; ++n) {
    // One output row (n, q) is ~M * L * P * 4 * D multiply-adds; 16 rows amortise a task.
    at::parallel_for(n * s.Lq, (n + 1) * s.Lq, 16, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(s.D);
      forward_rows(p.value, p.shapes, p.starts, p.loc, p.attn, op, s, begin, end, zeros.data(),
                   scratch.data());
    });
  }
}

// Backward over all (n, m) tasks; each owns disjoint outputs (see backward_task).
// float16/bfloat16: each task sums its grad_value rows in a float32 buffer of its own (S * D,
// dense) and rounds them once at the end, so the extra memory is S * D floats per thread rather
// than a float32 copy of grad_value; float32/float64 sum in place.
template <typename scalar_t, typename loc_t>
void backward_cpu(const Inputs& in, at::Tensor& grad_value, at::Tensor& grad_loc,
                  at::Tensor& grad_attn) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool in_place = std::is_same_v<acc_t, scalar_t>;
  const Sizes& s = in.s;
  const InputPointers<scalar_t, loc_t> p(in);
  const scalar_t* gop = in.grad_output.const_data_ptr<scalar_t>();
  scalar_t* gvp = grad_value.mutable_data_ptr<scalar_t>();
  loc_t* glp = grad_loc.mutable_data_ptr<loc_t>();
  loc_t* gap = grad_attn.mutable_data_ptr<loc_t>();
  const std::vector<scalar_t> zeros(s.D, scalar_t(0));
  const auto backward_task = cpu_kernels<scalar_t, loc_t, acc_t>(s.D).backward_task;
  const int64_t pixel_stride = s.M * s.D;
  at::parallel_for(0, s.N * s.M, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(2 * s.D);
    std::vector<acc_t> buffer(in_place ? 0 : s.S * s.D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / s.M, m = t % s.M;
      scalar_t* grad_nm = gvp + (n * s.S * s.M + m) * s.D;
      if constexpr (in_place) {
        backward_task(p.value, p.shapes, p.starts, p.loc, p.attn, gop, grad_nm, pixel_stride, glp,
                      gap, s, n, m, zeros.data(), scratch.data());
      } else {
        std::fill(buffer.begin(), buffer.end(), acc_t(0));
        backward_task(p.value, p.shapes, p.starts, p.loc, p.attn, gop, buffer.data(), s.D, glp, gap,
                      s, n, m, zeros.data(), scratch.data());
        for (int64_t j = 0; j < s.S; ++j) {
          for (int64_t d = 0; d < s.D; ++d) {
            grad_nm[j * pixel_stride + d] = static_cast<scalar_t>(buffer[j * s.D + d]);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                      const at::Tensor& starts_in, const at::Tensor& loc_in,
                                      const at::Tensor& attn_in) {
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc_in, attn_in);
  const Sizes& s = in.s;
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, in.value.options());
  if (out.numel() == 0) return out;
  dispatch_dtypes(in, "ms_deform_attn_forward_cpu", [&](auto value_tag, auto loc_tag) {
    forward_cpu<decltype(value_tag), decltype(loc_tag)>(in, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
    const at::Tensor& loc_in, const at::Tensor& attn_in, const at::Tensor& grad_out_in) {
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc_in, attn_in, grad_out_in);
  const Sizes& s = in.s;
  auto grad_loc = at::zeros_like(in.sampling_locations);
  auto grad_attn = at::zeros_like(in.attention_weights);
  auto grad_value = at::zeros_like(in.value);
  if (s.N * s.Lq * s.M * s.L * s.P == 0 || s.D == 0) return {grad_value, grad_loc, grad_attn};
  dispatch_dtypes(in, "ms_deform_attn_backward_cpu", [&](auto value_tag, auto loc_tag) {
    backward_cpu<decltype(value_tag), decltype(loc_tag)>(in, grad_value, grad_loc, grad_attn);
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace deformable_detr
