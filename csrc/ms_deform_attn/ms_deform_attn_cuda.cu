// CUDA kernels of multi-scale deformable attention. The sampling math is the one the CPU kernels
// use (ms_deform_attn_sampling.h). Any batch size: indices are 64-bit and the loops grid-stride.
// Inputs of float16/bfloat16 are accumulated in float32 (at::opmath_type). Only c10's CUDA
// headers are included: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers that minimal
// toolkits lack.
//
// Shapes: value (N, S, M, D); sampling_locations (N, Lq, M, L, P, 2);
// attention_weights (N, Lq, M, L, P); output (N, Lq, M * D).
#include "ms_deform_attn.h"
#include "ms_deform_attn_sampling.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

namespace deformable_detr {
namespace {

constexpr int kThreads = 256;

int64_t num_blocks(int64_t total) {
  // Grid-stride loops cover the rest; 65535 * 8 blocks fill any current GPU.
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8));
}

// One thread per output element (n, q, m, d): consecutive threads read consecutive channels.
template <typename scalar_t, typename loc_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ value,
                               const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const loc_t* __restrict__ loc,
                               const loc_t* __restrict__ attn, scalar_t* __restrict__ out,
                               Sizes s) {
  const int64_t total = s.N * s.Lq * s.M * s.D;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = idx % s.D;
    const int64_t m = (idx / s.D) % s.M;
    const int64_t row = idx / (s.D * s.M);
    const int64_t n = row / s.Lq;
    acc_t acc = acc_t(0);
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const scalar_t* base = value + ((n * s.S + starts[l]) * s.M + m) * s.D + d;
      const int64_t first = sample_index(row, m, l, 0, s.M, s.L, s.P);
      for_each_sample<acc_t>(loc, attn, first, s.P, H, W,
                             [&](int64_t, const BilinearCorners<acc_t>& c, acc_t a) {
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.valid[k]) {
            acc += a * c.weight[k] * static_cast<acc_t>(base[c.offset[k] * s.M * s.D]);
          }
        }
      }, [&](int64_t, const BilinearCorners<acc_t>& c, acc_t a) {
        acc += skipped_terms(c, a).out;
      });
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// One thread per sample (n, q, m, l, p): it owns its location and weight gradients; grad_value is
// summed with atomics into an acc_t buffer (float32 for half types), so it is not bitwise
// deterministic on the GPU.
template <typename scalar_t, typename loc_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ value,
                                const int64_t* __restrict__ shapes,
                                const int64_t* __restrict__ starts, const loc_t* __restrict__ loc,
                                const loc_t* __restrict__ attn,
                                const scalar_t* __restrict__ grad_out,
                                acc_t* __restrict__ grad_value, loc_t* __restrict__ grad_loc,
                                loc_t* __restrict__ grad_attn, Sizes s) {
  const int64_t total = s.N * s.Lq * s.M * s.L * s.P;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t l = (i / s.P) % s.L;
    const int64_t m = (i / (s.P * s.L)) % s.M;
    const int64_t row = i / (s.P * s.L * s.M);
    const int64_t n = row / s.Lq;
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
    BilinearCorners<acc_t> c;
    const acc_t a = static_cast<acc_t>(attn[i]);
    if (!sample_corners<acc_t>(loc, i, H, W, c)) {
      const SkippedTerms<acc_t> t = skipped_terms(c, a);
      grad_attn[i] = static_cast<loc_t>(t.grad_attn);
      grad_loc[2 * i] = static_cast<loc_t>(t.grad_x);
      grad_loc[2 * i + 1] = static_cast<loc_t>(t.grad_y);
      continue;
    }
    const int64_t value_offset = ((n * s.S + starts[l]) * s.M + m) * s.D;
    const scalar_t* go = grad_out + (row * s.M + m) * s.D;
    acc_t g[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (!c.valid[k]) continue;
      const int64_t off = value_offset + c.offset[k] * s.M * s.D;
      const acc_t wk = a * c.weight[k];
      acc_t dot = acc_t(0);
      for (int64_t d = 0; d < s.D; ++d) {
        const acc_t god = static_cast<acc_t>(go[d]);
        dot += god * static_cast<acc_t>(value[off + d]);
        atomicAdd(grad_value + off + d, wk * god);
      }
      g[k] = dot;
    }
    acc_t ga, gx, gy;
    bilinear_backward<acc_t>(c, g, a, H, W, &ga, &gx, &gy);
    grad_attn[i] = static_cast<loc_t>(ga);
    grad_loc[2 * i] = static_cast<loc_t>(gx);
    grad_loc[2 * i + 1] = static_cast<loc_t>(gy);
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value_in, const at::Tensor& shapes_in,
                                       const at::Tensor& starts_in, const at::Tensor& loc_in,
                                       const at::Tensor& attn_in) {
  const c10::cuda::CUDAGuard guard(value_in.device());
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc_in, attn_in);
  const Sizes& s = in.s;
  auto out = at::empty({s.N, s.Lq, s.M * s.D}, in.value.options());
  if (out.numel() == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtypes(in, "ms_deform_attn_forward_cuda", [&](auto value_tag, auto loc_tag) {
    using scalar_t = decltype(value_tag);
    using loc_t = decltype(loc_tag);
    using acc_t = at::opmath_type<scalar_t>;
    const InputPointers<scalar_t, loc_t> p(in);
    forward_kernel<scalar_t, loc_t, acc_t><<<num_blocks(out.numel()), kThreads, 0, stream>>>(
        p.value, p.shapes, p.starts, p.loc, p.attn, out.mutable_data_ptr<scalar_t>(), s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value_in, const at::Tensor& shapes_in, const at::Tensor& starts_in,
    const at::Tensor& loc_in, const at::Tensor& attn_in, const at::Tensor& grad_out_in) {
  const c10::cuda::CUDAGuard guard(value_in.device());
  const Inputs in = prepare_inputs(value_in, shapes_in, starts_in, loc_in, attn_in, grad_out_in);
  const Sizes& s = in.s;
  auto grad_loc = at::zeros_like(in.sampling_locations);
  auto grad_attn = at::zeros_like(in.attention_weights);
  const auto acc_type = at::toOpMathType(in.value.scalar_type());
  auto grad_value_acc = at::zeros(in.value.sizes(), in.value.options().dtype(acc_type));
  const int64_t samples = s.N * s.Lq * s.M * s.L * s.P;
  if (samples > 0 && s.D > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtypes(in, "ms_deform_attn_backward_cuda", [&](auto value_tag, auto loc_tag) {
      using scalar_t = decltype(value_tag);
      using loc_t = decltype(loc_tag);
      using acc_t = at::opmath_type<scalar_t>;
      const InputPointers<scalar_t, loc_t> p(in);
      backward_kernel<scalar_t, loc_t, acc_t><<<num_blocks(samples), kThreads, 0, stream>>>(
          p.value, p.shapes, p.starts, p.loc, p.attn, in.grad_output.const_data_ptr<scalar_t>(),
          grad_value_acc.mutable_data_ptr<acc_t>(), grad_loc.mutable_data_ptr<loc_t>(),
          grad_attn.mutable_data_ptr<loc_t>(), s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto grad_value = grad_value_acc.scalar_type() == in.value.scalar_type()
                        ? grad_value_acc
                        : grad_value_acc.to(in.value.scalar_type());
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace deformable_detr
