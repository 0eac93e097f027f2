// CPU entry points of multi-scale deformable attention: allocation, dtype dispatch, threading
// (at::parallel_for) and the choice of instruction set. The kernels are in
// ms_deform_attn_cpu_kernel.h, compiled here once per instruction set; the sampling math they
// share with CUDA is in ms_deform_attn_sampling.h.
//
// Shapes: value (N, S, M, D); sampling_locations (N, Lq, M, L, P, 2);
// attention_weights (N, Lq, M, L, P); output (N, Lq, M * D).
#include "ms_deform_attn.h"
#include "ms_deform_attn_sampling.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdlib>
#include <cstring>
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

template <typename scalar_t, typename acc_t>
void forward_rows(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                  const scalar_t* loc, const scalar_t* attn, scalar_t* out, const Sizes& s,
                  int64_t begin, int64_t end, acc_t* acc) {
#ifdef DDETR_X86_CLONES
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return avx512::forward_rows(value, shapes, starts, loc, attn, out, s, begin, end, acc);
    case Isa::kAvx2:
      return avx2::forward_rows(value, shapes, starts, loc, attn, out, s, begin, end, acc);
    case Isa::kGeneric:
      break;
  }
#endif
  generic::forward_rows(value, shapes, starts, loc, attn, out, s, begin, end, acc);
}

template <typename scalar_t, typename acc_t>
void backward_task(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                   const scalar_t* loc, const scalar_t* attn, const scalar_t* grad_out,
                   acc_t* grad_value, scalar_t* grad_loc, scalar_t* grad_attn, const Sizes& s,
                   int64_t n, int64_t m, int64_t l) {
#ifdef DDETR_X86_CLONES
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return avx512::backward_task(value, shapes, starts, loc, attn, grad_out, grad_value,
                                   grad_loc, grad_attn, s, n, m, l);
    case Isa::kAvx2:
      return avx2::backward_task(value, shapes, starts, loc, attn, grad_out, grad_value,
                                 grad_loc, grad_attn, s, n, m, l);
    case Isa::kGeneric:
      break;
  }
#endif
  generic::backward_task(value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc,
                         grad_attn, s, n, m, l);
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                      const at::Tensor& starts_in, const at::Tensor& loc_in,
                                      const at::Tensor& attn_in) {
  const Sizes s = check_inputs(value_in, shapes_in, starts_in, loc_in, attn_in);
  const auto value = value_in.contiguous();
  const auto shapes = shapes_in.contiguous();
  const auto starts = starts_in.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, value.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* v = value.const_data_ptr<scalar_t>();
        const int64_t* sh = shapes.const_data_ptr<int64_t>();
        const int64_t* st = starts.const_data_ptr<int64_t>();
        const scalar_t* lp = loc.const_data_ptr<scalar_t>();
        const scalar_t* ap = attn.const_data_ptr<scalar_t>();
        scalar_t* op = out.mutable_data_ptr<scalar_t>();
        // One output row (n, q) is ~M * L * P * 4 * D multiply-adds; 16 rows amortise a task.
        at::parallel_for(0, s.N * s.Lq, 16, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> acc(s.D);
          forward_rows<scalar_t, acc_t>(v, sh, st, lp, ap, op, s, begin, end, acc.data());
        });
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
    const at::Tensor& loc_in, const at::Tensor& attn_in, const at::Tensor& grad_out_in) {
  const Sizes s = check_inputs(value_in, shapes_in, starts_in, loc_in, attn_in);
  TORCH_CHECK(grad_out_in.dim() == 3 && grad_out_in.size(0) == s.N && grad_out_in.size(1) == s.Lq &&
                  grad_out_in.size(2) == s.M * s.D,
              "grad_output must be (N, Lq, M * D) = (", s.N, ", ", s.Lq, ", ", s.M * s.D,
              "), got ", grad_out_in.sizes());
  const auto value = value_in.contiguous();
  const auto shapes = shapes_in.contiguous();
  const auto starts = starts_in.contiguous();
  const auto loc = loc_in.contiguous();
  const auto attn = attn_in.contiguous();
  const auto grad_out = grad_out_in.to(value.scalar_type()).contiguous();
  auto grad_loc = at::zeros_like(loc);
  auto grad_attn = at::zeros_like(attn);
  // Reduced-precision grad_value is summed in float32 and rounded once at the end.
  const auto acc_type = at::toOpMathType(value.scalar_type());
  auto grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_type));
  if (s.N * s.Lq * s.M * s.L * s.P > 0 && s.D > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const scalar_t* v = value.const_data_ptr<scalar_t>();
          const int64_t* sh = shapes.const_data_ptr<int64_t>();
          const int64_t* st = starts.const_data_ptr<int64_t>();
          const scalar_t* lp = loc.const_data_ptr<scalar_t>();
          const scalar_t* ap = attn.const_data_ptr<scalar_t>();
          const scalar_t* gop = grad_out.const_data_ptr<scalar_t>();
          acc_t* gvp = grad_value_acc.mutable_data_ptr<acc_t>();
          scalar_t* glp = grad_loc.mutable_data_ptr<scalar_t>();
          scalar_t* gap = grad_attn.mutable_data_ptr<scalar_t>();
          // Tasks are (n, m, l) triples; each owns disjoint outputs (see backward_task).
          at::parallel_for(0, s.N * s.M * s.L, 1, [&](int64_t begin, int64_t end) {
            for (int64_t t = begin; t < end; ++t) {
              const int64_t n = t / (s.M * s.L), m = (t / s.L) % s.M, l = t % s.L;
              backward_task<scalar_t, acc_t>(v, sh, st, lp, ap, gop, gvp, glp, gap, s, n, m, l);
            }
          });
        });
  }
  auto grad_value = grad_value_acc.scalar_type() == value.scalar_type()
                        ? grad_value_acc
                        : grad_value_acc.to(value.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace deformable_detr
