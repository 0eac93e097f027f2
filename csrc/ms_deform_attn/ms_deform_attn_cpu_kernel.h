// CPU kernels of multi-scale deformable attention, written once and compiled once per instruction
// set: ms_deform_attn_cpu.cpp includes this file several times, each time inside a
// `#pragma GCC target` region and with DDETR_ISA naming the namespace. No include guard on purpose.
// The loops over the head dim D are plain loops (omp simd for the reductions) that the compiler
// vectorises for each target.
//
// Shapes: value (N, S, M, D); locations (N, Lq, M, L, P, 2); weights (N, Lq, M, L, P);
// output (N, Lq, M * D). All pointers are to contiguous memory.

namespace deformable_detr {
namespace DDETR_ISA {

// Forward for output rows [row_begin, row_end) of the N * Lq rows, all heads.
// acc: scratch of D floats (acc_t) owned by the calling thread.
template <typename scalar_t, typename acc_t>
void forward_rows(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                  const scalar_t* loc, const scalar_t* attn, scalar_t* out, const Sizes& s,
                  int64_t row_begin, int64_t row_end, acc_t* acc) {
  const int64_t D = s.D;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / s.Lq;
    for (int64_t m = 0; m < s.M; ++m) {
      for (int64_t d = 0; d < D; ++d) acc[d] = acc_t(0);
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
        // value rows of (n, level l, head m); pixel i starts at base + i * M * D.
        const scalar_t* base = value + ((n * s.S + starts[l]) * s.M + m) * D;
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t i = sample_index(row, m, l, p, s.M, s.L, s.P);
          BilinearCorners<acc_t> c;
          if (!bilinear_corners<acc_t>(static_cast<acc_t>(loc[2 * i]),
                                       static_cast<acc_t>(loc[2 * i + 1]), H, W, c)) {
            continue;
          }
          const acc_t a = static_cast<acc_t>(attn[i]);
          for (int k = 0; k < 4; ++k) {
            if (!c.valid[k]) continue;
            const scalar_t* v = base + c.offset[k] * s.M * D;
            const acc_t wk = a * c.weight[k];
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) acc[d] += wk * static_cast<acc_t>(v[d]);
          }
        }
      }
      scalar_t* o = out + (row * s.M + m) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[d]);
    }
  }
}

// Backward for one (n, m, l): everything it writes belongs to it alone (grad_value rows of level l
// and head m in image n; the gradients of its own samples), so tasks never race, and the sum into
// each grad_value element runs over queries and points in a fixed order: the result is bitwise
// the same for any number of threads.
// grad_value: accumulator in acc_t (N, S, M, D); grad_loc, grad_attn zero-initialised.
template <typename scalar_t, typename acc_t>
void backward_task(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                   const scalar_t* loc, const scalar_t* attn, const scalar_t* grad_out,
                   acc_t* grad_value, scalar_t* grad_loc, scalar_t* grad_attn, const Sizes& s,
                   int64_t n, int64_t m, int64_t l) {
  const int64_t D = s.D;
  const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
  const int64_t value_offset = ((n * s.S + starts[l]) * s.M + m) * D;
  const scalar_t* base = value + value_offset;
  acc_t* grad_base = grad_value + value_offset;
  for (int64_t q = 0; q < s.Lq; ++q) {
    const int64_t row = n * s.Lq + q;
    const scalar_t* go = grad_out + (row * s.M + m) * D;
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t i = sample_index(row, m, l, p, s.M, s.L, s.P);
      BilinearCorners<acc_t> c;
      if (!bilinear_corners<acc_t>(static_cast<acc_t>(loc[2 * i]),
                                   static_cast<acc_t>(loc[2 * i + 1]), H, W, c)) {
        continue;
      }
      const acc_t a = static_cast<acc_t>(attn[i]);
      acc_t g[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      for (int k = 0; k < 4; ++k) {
        if (!c.valid[k]) continue;
        const scalar_t* v = base + c.offset[k] * s.M * D;
        acc_t* gv = grad_base + c.offset[k] * s.M * D;
        const acc_t wk = a * c.weight[k];
        acc_t dot = acc_t(0);
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < D; ++d) {
          const acc_t god = static_cast<acc_t>(go[d]);
          dot += god * static_cast<acc_t>(v[d]);
          gv[d] += wk * god;
        }
        g[k] = dot;
      }
      acc_t ga, gx, gy;
      bilinear_backward<acc_t>(c, g, a, H, W, &ga, &gx, &gy);
      grad_attn[i] = static_cast<scalar_t>(ga);
      grad_loc[2 * i] = static_cast<scalar_t>(gx);
      grad_loc[2 * i + 1] = static_cast<scalar_t>(gy);
    }
  }
}

}  // namespace DDETR_ISA
}  // namespace deformable_detr
