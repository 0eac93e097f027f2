// CPU kernels of multi-scale deformable attention, written once and compiled once per instruction
// set: ms_deform_attn_cpu.cpp includes this file several times, each time inside a
// `#pragma GCC target` region and with DDETR_ISA naming the namespace. No include guard on purpose.
//
// The loops over the head dim D are plain loops that the compiler vectorises for each target.
// kD > 0 fixes D at compile time (the common head dims), so that accumulators and grad_output
// live in registers; kD == 0 reads D from the sizes and works in the caller's scratch.
// A corner outside the map reads a row of zeros and writes to a sink row, so the inner loops have
// no branches.
//
// Shapes: value (N, S, M, D); locations (N, Lq, M, L, P, 2); weights (N, Lq, M, L, P);
// output (N, Lq, M * D). All pointers are to contiguous memory.

namespace deformable_detr {
namespace DDETR_ISA {

// Forward for output rows [row_begin, row_end) of the N * Lq rows, all heads.
// zeros: D zeros. scratch: D values of acc_t owned by the calling thread (used when kD == 0).
template <typename scalar_t, typename loc_t, typename acc_t, int kD>
void forward_rows(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                  const loc_t* loc, const loc_t* attn, scalar_t* out, const Sizes& s,
                  int64_t row_begin, int64_t row_end, const scalar_t* zeros, acc_t* scratch) {
  const int64_t D = kD > 0 ? kD : s.D;
  const int64_t pixel_stride = s.M * D;  // from one pixel's row of a head to the next pixel's
  acc_t registers[kD > 0 ? kD : 1];
  acc_t* acc = kD > 0 ? registers : scratch;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / s.Lq;
    for (int64_t m = 0; m < s.M; ++m) {
      for (int64_t d = 0; d < D; ++d) acc[d] = acc_t(0);
      // The skipped samples' terms (skipped_terms: the same in every channel), summed apart so
      // that a skipped sample costs no pass over D.
      acc_t skipped = acc_t(0);
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
        const scalar_t* base = value + ((n * s.S + starts[l]) * s.M + m) * D;
        const int64_t first = sample_index(row, m, l, 0, s.M, s.L, s.P);
        for_each_sample<acc_t>(loc, attn, first, s.P, H, W,
                               [&](int64_t, const BilinearCorners<acc_t>& c, acc_t a) {
          const scalar_t* v[4];
          acc_t w[4];
          for (int k = 0; k < 4; ++k) {
            v[k] = c.valid[k] ? base + c.offset[k] * pixel_stride : zeros;
            w[k] = a * c.weight[k];
          }
          // One add into acc per sample keeps the dependency chain short.
          for (int64_t d = 0; d < D; ++d) {
            acc[d] += w[0] * static_cast<acc_t>(v[0][d]) + w[1] * static_cast<acc_t>(v[1][d]) +
                      w[2] * static_cast<acc_t>(v[2][d]) + w[3] * static_cast<acc_t>(v[3][d]);
          }
        }, [&](int64_t, const BilinearCorners<acc_t>& c, acc_t a) {
          skipped += skipped_terms(c, a).out;
        });
      }
      scalar_t* o = out + (row * s.M + m) * D;
      for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(acc[d] + skipped);
    }
  }
}

// How many queries ahead the backward prefetches its inputs.
constexpr int64_t kPrefetchQueries = 8;

// Asks for the cache lines of count values starting at p.
template <typename T>
inline void prefetch(const T* p, int64_t count) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t offset = 0; offset < count * static_cast<int64_t>(sizeof(T)); offset += 64) {
    __builtin_prefetch(bytes + offset);
  }
}

// Backward for one (n, m): everything it writes belongs to it alone (the grad_value rows of head m
// in image n; the gradients of its own samples), so tasks never race, and the sum into each
// grad_value element runs over queries, levels and points in a fixed order: the result is bitwise
// the same for any number of threads. Its reads of locations, weights and grad_output are
// contiguous runs of (L * P * 2), (L * P) and D values per query.
// grad_nm: the zeroed acc_t accumulator of grad_value for (n, m): pixel j's D values start at
// grad_nm + j * grad_stride. grad_loc and grad_attn are zero-initialised.
// zeros: D zeros. scratch: 2 * D values of acc_t owned by the calling thread: a sink row for
// corners outside the map, then (kD == 0) grad_output.
template <typename scalar_t, typename loc_t, typename acc_t, int kD>
void backward_task(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                   const loc_t* loc, const loc_t* attn, const scalar_t* grad_out, acc_t* grad_nm,
                   int64_t grad_stride, loc_t* grad_loc, loc_t* grad_attn, const Sizes& s,
                   int64_t n, int64_t m, const scalar_t* zeros, acc_t* scratch) {
  const int64_t D = kD > 0 ? kD : s.D;
  const int64_t pixel_stride = s.M * D;  // from one pixel's row of a head to the next pixel's
  const scalar_t* value_nm = value + (n * s.S * s.M + m) * D;
  acc_t* sink = scratch;
  acc_t registers[kD > 0 ? kD : 1];
  acc_t* go = kD > 0 ? registers : scratch + D;  // grad_output of (n, q, m) in acc_t
  for (int64_t q = 0; q < s.Lq; ++q) {
    const int64_t row = n * s.Lq + q;
    if (q + kPrefetchQueries < s.Lq) {
      // This head's runs are a small part of each query's rows: the hardware prefetcher, which
      // stops at page boundaries, misses them.
      const int64_t ahead = row + kPrefetchQueries;
      const int64_t first = sample_index(ahead, m, 0, 0, s.M, s.L, s.P);
      prefetch(loc + 2 * first, 2 * s.L * s.P);
      prefetch(attn + first, s.L * s.P);
      prefetch(grad_out + (ahead * s.M + m) * D, D);
    }
    const scalar_t* go_row = grad_out + (row * s.M + m) * D;
    for (int64_t d = 0; d < D; ++d) go[d] = static_cast<acc_t>(go_row[d]);
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
      const int64_t first = sample_index(row, m, l, 0, s.M, s.L, s.P);
      for_each_sample<acc_t>(loc, attn, first, s.P, H, W,
                             [&](int64_t i, const BilinearCorners<acc_t>& c, acc_t a) {
        acc_t g[4];
        for (int k = 0; k < 4; ++k) {
          const int64_t pixel = starts[l] + c.offset[k];
          const scalar_t* v = c.valid[k] ? value_nm + pixel * pixel_stride : zeros;
          acc_t* gv = c.valid[k] ? grad_nm + pixel * grad_stride : sink;
          const acc_t wk = a * c.weight[k];
          acc_t dot = acc_t(0);
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += go[d] * static_cast<acc_t>(v[d]);
          g[k] = dot;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) gv[d] += wk * go[d];
        }
        acc_t ga, gx, gy;
        bilinear_backward<acc_t>(c, g, a, H, W, &ga, &gx, &gy);
        grad_attn[i] = static_cast<loc_t>(ga);
        grad_loc[2 * i] = static_cast<loc_t>(gx);
        grad_loc[2 * i + 1] = static_cast<loc_t>(gy);
      }, [&](int64_t i, const BilinearCorners<acc_t>& c, acc_t a) {
        const SkippedTerms<acc_t> t = skipped_terms(c, a);
        grad_attn[i] = static_cast<loc_t>(t.grad_attn);
        grad_loc[2 * i] = static_cast<loc_t>(t.grad_x);
        grad_loc[2 * i + 1] = static_cast<loc_t>(t.grad_y);
      });
    }
  }
}

}  // namespace DDETR_ISA
}  // namespace deformable_detr
