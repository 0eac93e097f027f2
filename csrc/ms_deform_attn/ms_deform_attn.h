// Multi-scale deformable attention: the kernels' entry points and the checks they share.
//
// Shapes: value (N, S, M, D); spatial_shapes (L, 2) int64 rows (H, W); level_start_index (L,)
// int64; sampling_locations (N, Lq, M, L, P, 2) normalised (x, y); attention_weights
// (N, Lq, M, L, P); output and grad_output (N, Lq, M * D).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <tuple>
#include <type_traits>

namespace deformable_detr {

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output);
#endif

// Sizes of one call, read off the checked tensors.
struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

// The inputs of one call, checked (shape, dtype, device) and made contiguous, with their sizes;
// grad_output (backward only) also in value's dtype. The Python wrapper checks the same with
// friendlier messages; these guard direct calls through torch.ops.
struct Inputs {
  at::Tensor value, spatial_shapes, level_start_index, sampling_locations, attention_weights;
  at::Tensor grad_output;  // undefined in the forward
  Sizes s;
};

Inputs prepare_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                      const at::Tensor& attention_weights,
                      const at::Tensor& grad_output = at::Tensor());

// Calls fn(loc_t{}) with loc_t the C++ type of the locations and attention weights: the value's
// own, or float32 with float16/bfloat16 values (autocast's mix: half values, float32 locations,
// which keep their precision).
template <typename scalar_t, typename Fn>
void with_location_type(at::ScalarType location_type, Fn&& fn) {
  if constexpr (!std::is_same_v<at::opmath_type<scalar_t>, scalar_t>) {
    if (location_type == at::kFloat) return fn(float{});
  }
  fn(scalar_t{});
}

// Checks that spatial_shapes has positive rows that cover S and that level_start_index holds the
// start of each level, so that no kernel reads outside value. Reads the data: CPU tensors only.
void check_levels_cpu(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                      int64_t S);

}  // namespace deformable_detr
