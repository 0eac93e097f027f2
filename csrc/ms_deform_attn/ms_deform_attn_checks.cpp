// Checks shared by the CPU and CUDA entry points of the op.
#include "ms_deform_attn.h"

#include <c10/util/Exception.h>

namespace deformable_detr {

namespace {

Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "sampling_locations must be (N, Lq, M, L, P, 2), got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, "attention_weights must be (N, Lq, M, L, P), got ",
              attention_weights.sizes());
  const Sizes s{value.size(0),
                value.size(1),
                value.size(2),
                value.size(3),
                sampling_locations.size(1),
                sampling_locations.size(3),
                sampling_locations.size(4)};
  TORCH_CHECK(sampling_locations.size(0) == s.N && sampling_locations.size(2) == s.M,
              "sampling_locations ", sampling_locations.sizes(), " disagrees with value ",
              value.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "attention_weights ", attention_weights.sizes(),
              " disagrees with sampling_locations ", sampling_locations.sizes());
  TORCH_CHECK(
      spatial_shapes.dim() == 2 && spatial_shapes.size(0) == s.L && spatial_shapes.size(1) == 2,
      "spatial_shapes must be (L, 2) with L = ", s.L, ", got ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == s.L,
              "level_start_index must be (L,) with L = ", s.L, ", got ", level_start_index.sizes());
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
      "spatial_shapes and level_start_index must be int64");
  const auto value_type = value.scalar_type(), location_type = sampling_locations.scalar_type();
  const bool half_value = value_type == at::kHalf || value_type == at::kBFloat16;
  TORCH_CHECK(attention_weights.scalar_type() == location_type &&
                  (location_type == value_type || (half_value && location_type == at::kFloat)),
              "sampling_locations and attention_weights must share a dtype, the value's or "
              "float32 with float16/bfloat16 values; got ",
              value_type, ", ", location_type, ", ", attention_weights.scalar_type());
  const auto device = value.device();
  TORCH_CHECK(spatial_shapes.device() == device && level_start_index.device() == device &&
                  sampling_locations.device() == device && attention_weights.device() == device,
              "all inputs must be on ", device);
  return s;
}

// Checks that spatial_shapes has positive rows that cover S and that level_start_index holds the
// start of each level. Reads the data: contiguous CPU tensors only.
void check_levels_cpu(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                      int64_t S) {
  const int64_t* sh = spatial_shapes.const_data_ptr<int64_t>();
  const int64_t* st = level_start_index.const_data_ptr<int64_t>();
  int64_t start = 0;
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    TORCH_CHECK(sh[2 * l] > 0 && sh[2 * l + 1] > 0, "spatial_shapes row ", l, " = (", sh[2 * l],
                ", ", sh[2 * l + 1], ") must be positive");
    TORCH_CHECK(st[l] == start, "level_start_index[", l, "] = ", st[l], " but level ", l,
                " starts at ", start, " by spatial_shapes");
    start += sh[2 * l] * sh[2 * l + 1];
  }
  TORCH_CHECK(start == S, "spatial_shapes cover ", start, " positions but value has S = ", S);
}

}  // namespace

Inputs prepare_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                      const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  const Sizes s =
      check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  Inputs in{value.contiguous(),
            spatial_shapes.contiguous(),
            level_start_index.contiguous(),
            sampling_locations.contiguous(),
            attention_weights.contiguous(),
            at::Tensor(),
            s};
  if (grad_output.defined()) {
    TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == s.N &&
                    grad_output.size(1) == s.Lq && grad_output.size(2) == s.M * s.D,
                "grad_output must be (N, Lq, M * D) = (", s.N, ", ", s.Lq, ", ", s.M * s.D,
                "), got ", grad_output.sizes());
    in.grad_output = grad_output.to(value.scalar_type()).contiguous();
  }
  if (in.value.is_cpu()) check_levels_cpu(in.spatial_shapes, in.level_start_index, s.S);
  return in;
}

}  // namespace deformable_detr
