// Bilinear sampling math of multi-scale deformable attention, shared by the CPU and CUDA
// kernels so that the CPU tests cover the GPU's arithmetic too.
//
// Conventions (as torch.nn.functional.grid_sample, bilinear, zero padding, align_corners=False):
// a normalised location (x, y) in [0, 1] maps to the pixel coordinates (x * W - 0.5, y * H - 0.5),
// pixel centres lie on integers, and corners outside the H x W map contribute zero. NaN is
// propagated as grid_sample propagates it (see skipped_terms): a NaN attention weight, or a NaN or
// infinite coordinate, makes the output of its query and head NaN, so that a NaN upstream reaches
// the output and the loss instead of vanishing.
#pragma once

#include <cmath>
#include <cstdint>

// Always inlined, on the CPU too: the CPU kernels are compiled once per instruction set, and a
// helper left out of line would run as generic code and call the kernel's loop body given to
// for_each_sample instead of inlining it.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define DDETR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DDETR_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace deformable_detr {

template <typename acc_t>
DDETR_HOST_DEVICE acc_t floor_value(acc_t v) {
#if defined(__CUDA_ARCH__)
  return floor(v);
#else
  return std::floor(v);
#endif
}

// The four neighbours of a sampling location on one H x W level.
// Corner k: 0 = (top, left), 1 = (top, right), 2 = (bottom, left), 3 = (bottom, right).
template <typename acc_t>
struct BilinearCorners {
  int64_t offset[4];  // row-major pixel index h * W + w inside the level
  acc_t weight[4];    // bilinear weight; 0 for a corner outside the map
  bool valid[4];      // corner inside the map
  acc_t lh, lw;       // fractional parts of the pixel coordinates (skipped: see bilinear_corners)
};

// Fills `c` for the normalised location (x, y) on an H x W map. Returns false when no corner can be
// inside the map (far outside, NaN or inf); the caller then skips the sample, whose terms are
// skipped_terms(c, ...): only c.lh and c.lw are set, to h - h and w - w (0, or NaN for a NaN or
// infinite coordinate). The strict bounds exclude the points where bilinear interpolation with
// zero padding has a kink at the border.
template <typename acc_t>
DDETR_HOST_DEVICE bool bilinear_corners(acc_t x, acc_t y, int64_t H, int64_t W,
                                        BilinearCorners<acc_t>& c) {
  const acc_t h = y * static_cast<acc_t>(H) - acc_t(0.5);
  const acc_t w = x * static_cast<acc_t>(W) - acc_t(0.5);
  // Written so that NaN fails every comparison: the test for NaN rides on the range test, and
  // samples inside the map pay nothing for it.
  if (!(h > acc_t(-1) && w > acc_t(-1) && h < static_cast<acc_t>(H) && w < static_cast<acc_t>(W))) {
    c.lh = h - h;
    c.lw = w - w;
    return false;
  }
  const acc_t h0f = floor_value(h);
  const acc_t w0f = floor_value(w);
  const int64_t h0 = static_cast<int64_t>(h0f);
  const int64_t w0 = static_cast<int64_t>(w0f);
  const int64_t h1 = h0 + 1;
  const int64_t w1 = w0 + 1;
  c.lh = h - h0f;
  c.lw = w - w0f;
  const acc_t hh = acc_t(1) - c.lh;
  const acc_t hw = acc_t(1) - c.lw;
  const bool top = h0 >= 0, bottom = h1 <= H - 1, left = w0 >= 0, right = w1 <= W - 1;
  c.valid[0] = top && left;
  c.valid[1] = top && right;
  c.valid[2] = bottom && left;
  c.valid[3] = bottom && right;
  c.offset[0] = h0 * W + w0;
  c.offset[1] = h0 * W + w1;
  c.offset[2] = h1 * W + w0;
  c.offset[3] = h1 * W + w1;
  c.weight[0] = c.valid[0] ? hh * hw : acc_t(0);
  c.weight[1] = c.valid[1] ? hh * c.lw : acc_t(0);
  c.weight[2] = c.valid[2] ? c.lh * hw : acc_t(0);
  c.weight[3] = c.valid[3] ? c.lh * c.lw : acc_t(0);
  return true;
}

// The corners of sample i, whose location (x, y) is at locations[2 * i], in acc_t.
template <typename acc_t, typename scalar_t>
DDETR_HOST_DEVICE bool sample_corners(const scalar_t* locations, int64_t i, int64_t H, int64_t W,
                                      BilinearCorners<acc_t>& c) {
  return bilinear_corners<acc_t>(static_cast<acc_t>(locations[2 * i]),
                                 static_cast<acc_t>(locations[2 * i + 1]), H, W, c);
}

// The terms of a sample that bilinear_corners skipped (c from it), with attention weight attn, as
// grid_sample's: all its corners are outside the map, so each term is a product with zero, which
// is 0, or NaN when a factor is NaN or infinite.
//   out:       attn * sample, in each of the D channels; NaN for a non-finite weight or location
//   grad_attn: <grad_output, sample>; NaN for a non-finite location (grad_output taken finite)
//   grad_x:    NaN for a non-finite weight or y (d(sample)/dx is a product with y's fraction)
//   grad_y:    NaN for a non-finite weight or x.
// For finite inputs every term is +0 (x - x is +0), which leaves the sums it is added to, and the
// zero-initialised gradients, bitwise as they were.
template <typename acc_t>
struct SkippedTerms {
  acc_t out, grad_attn, grad_x, grad_y;
};

template <typename acc_t>
DDETR_HOST_DEVICE SkippedTerms<acc_t> skipped_terms(const BilinearCorners<acc_t>& c, acc_t attn) {
  const acc_t a0 = attn - attn;  // 0, or NaN for a NaN or infinite weight
  return {a0 + c.lh + c.lw, c.lh + c.lw, a0 + c.lh, a0 + c.lw};
}

// For each sample i in [first, first + count) (the points of one query, head and level: an
// H x W map), calls fn(i, c, a) if bilinear_corners keeps it and skipped(i, c, a) if not, with c
// its corners and a its attention weight (weights[i]) in acc_t.
template <typename acc_t, typename scalar_t, typename Fn, typename Skipped>
DDETR_HOST_DEVICE void for_each_sample(const scalar_t* locations, const scalar_t* weights,
                                       int64_t first, int64_t count, int64_t H, int64_t W, Fn&& fn,
                                       Skipped&& skipped) {
  for (int64_t i = first; i < first + count; ++i) {
    BilinearCorners<acc_t> c;
    if (sample_corners<acc_t>(locations, i, H, W, c)) {
      fn(i, c, static_cast<acc_t>(weights[i]));
    } else {
      skipped(i, c, static_cast<acc_t>(weights[i]));
    }
  }
}

// Gradients of one sample, given g[k] = <grad_output, value at corner k> (0 for invalid corners)
// and the sample's attention weight `attn`:
//   grad_attn = sum_k weight[k] * g[k]
//   grad_x    = attn * W * d(sample)/d(lw),  grad_y = attn * H * d(sample)/d(lh).
template <typename acc_t>
DDETR_HOST_DEVICE void bilinear_backward(const BilinearCorners<acc_t>& c, const acc_t g[4],
                                         acc_t attn, int64_t H, int64_t W, acc_t* grad_attn,
                                         acc_t* grad_x, acc_t* grad_y) {
  const acc_t hh = acc_t(1) - c.lh;
  const acc_t hw = acc_t(1) - c.lw;
  *grad_attn = c.weight[0] * g[0] + c.weight[1] * g[1] + c.weight[2] * g[2] + c.weight[3] * g[3];
  const acc_t d_lw = hh * (g[1] - g[0]) + c.lh * (g[3] - g[2]);
  const acc_t d_lh = hw * (g[2] - g[0]) + c.lw * (g[3] - g[1]);
  *grad_x = attn * static_cast<acc_t>(W) * d_lw;
  *grad_y = attn * static_cast<acc_t>(H) * d_lh;
}

// Flat index of sample (row, m, l, p) in sampling_locations / attention_weights, where
// row = n * Lq + q. sampling_locations has two values (x, y) at 2 * index.
DDETR_HOST_DEVICE int64_t sample_index(int64_t row, int64_t m, int64_t l, int64_t p, int64_t M,
                                       int64_t L, int64_t P) {
  return ((row * M + m) * L + l) * P + p;
}

}  // namespace deformable_detr
