// Multi-scale deformable attention: the kernels' entry points, and the checks and dtype dispatch
// they share.
//
// Shapes: value (N, S, M, D); spatial_shapes (L, 2) int64 rows (H, W); level_start_index (L,)
// int64; sampling_locations (N, Lq, M, L, P, 2) normalised (x, y); attention_weights
// (N, Lq, M, L, P); output and grad_output (N, Lq, M * D).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <tuple>

namespace deformable_detr {

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output);
#endif

// Sizes of one call, read off the checked tensors.
struct Sizes {
  int64_t N, S, M, D, Lq, L, P;
};

// The inputs of one call, checked and made contiguous, with their sizes; grad_output (backward
// only) also in value's dtype. Checked: shapes, dtypes and devices, and on the CPU also that
// spatial_shapes has positive rows that cover S and that level_start_index holds the start of each
// level, so that no kernel reads outside value (on the GPU, reading them would cost a sync). The
// Python wrapper checks the same with friendlier messages; these guard direct calls through
// torch.ops.
struct Inputs {
  at::Tensor value, spatial_shapes, level_start_index, sampling_locations, attention_weights;
  at::Tensor grad_output;  // undefined in the forward
  Sizes s;
};

Inputs prepare_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                      const at::Tensor& attention_weights,
                      const at::Tensor& grad_output = at::Tensor());

// The data of checked inputs as the kernels read it: values of scalar_t, locations and weights of
// loc_t (see dispatch_dtypes).
template <typename scalar_t, typename loc_t>
struct InputPointers {
  const scalar_t* value;
  const int64_t* shapes;
  const int64_t* starts;
  const loc_t* loc;
  const loc_t* attn;

  explicit InputPointers(const Inputs& in)
      : value(in.value.const_data_ptr<scalar_t>()),
        shapes(in.spatial_shapes.const_data_ptr<int64_t>()),
        starts(in.level_start_index.const_data_ptr<int64_t>()),
        loc(in.sampling_locations.const_data_ptr<loc_t>()),
        attn(in.attention_weights.const_data_ptr<loc_t>()) {}
};

// Calls fn(scalar_t{}, loc_t{}) with scalar_t the C++ type of the value and loc_t that of the
// locations and attention weights: the value's own, or float32 with float16/bfloat16 values
// (autocast's mix: half values, float32 locations, which keep their precision). The pairs are the
// ones prepare_inputs accepts; `name` is the kernel's, for the error on any other value dtype.
template <typename Fn>
void dispatch_dtypes(const Inputs& in, const char* name, Fn&& fn) {
  const bool float_locations = in.sampling_locations.scalar_type() == at::kFloat;
  switch (in.value.scalar_type()) {
    case at::kDouble:
      return fn(double{}, double{});
    case at::kFloat:
      return fn(float{}, float{});
    case at::kHalf:
      return float_locations ? fn(at::Half{}, float{}) : fn(at::Half{}, at::Half{});
    case at::kBFloat16:
      return float_locations ? fn(at::BFloat16{}, float{}) : fn(at::BFloat16{}, at::BFloat16{});
    default:
      TORCH_CHECK_NOT_IMPLEMENTED(false, '"', name, "\" not implemented for '",
                                  in.value.scalar_type(), "'");
  }
}

}  // namespace deformable_detr
