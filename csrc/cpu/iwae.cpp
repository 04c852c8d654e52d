// CPU importance-weighted ops, forward and backward (declared in cpu.h): the IWAE log-weights and
// the IWAE / MIWAE log-mean-exp bounds. Formulas and edge semantics are those of csrc/iwae.cu and
// fastvae/reference/iwae.py; layouts are the canonical contiguous ones, sample dim first: log_px_z,
// log_w (K, B), z (K, B, D), mu, logvar (B, D), MIWAE's log_w (K, M, B).
//
// - iwae_log_weights: the K samples of a column share its e^-logvar, so columns go in blocks whose
//   e^-logvar rows (kBlock elements) are computed once into a buffer; then z is streamed in memory
//   order, sample by sample, over the block's columns, each row summed in vector lanes.
// - its backward streams z the same way, writing grad_z and summing grad_mu, grad_logvar over the
//   samples into per-block accumulators in the buffer (L1), stored once per block.
// - the bounds: tiles of 4 vectors of contiguous columns; a first pass over the samples finds each
//   column's max, a second sums exp(log_w - max) (one exp per element, not the online rescaling a
//   GPU thread needs). A column of -inf has max -inf, shift 0, sum 0 and so lse = -inf; +inf gives
//   +inf; NaN reaches the sum and propagates.
// - the bounds' backward: exp(log_w - lse) times grad / M, zero where lse is not finite.
//
// Arithmetic in float32 (float64 for float64), results rounded once to the dtype; the
// log-sum-exps stay in the compute type. Kernels are structs whose run<W> launch() (dtype.h)
// instantiates at 8 float lanes for AVX2 + FMA CPUs and at 4 otherwise.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu.h"
#include "dtype.h"
#include "vmath.h"

namespace fastvae::cpu {

namespace {

// Compute-type elements per block buffer: 4 KiB of float32, so a block's buffers and the z rows
// streaming through stay in L1.
constexpr std::int64_t kBlock = 1024;

// Columns (b) per block when a row of D fits kBlock, else 1 (and D in slices of kBlock).
struct ColumnBlocks {
  std::int64_t columns;
  std::int64_t width;

  explicit ColumnBlocks(std::int64_t dim)
      : columns(dim <= kBlock ? kBlock / dim : 1), width(std::min(dim, kBlock)) {}
};

// --- iwae_log_weights ----------------------------------------------------------------------------

// log_w[k, b] = log_px_z[k, b] + 0.5 sum_d ((z - mu)^2 e^-lv + lv - z^2)[k, b, d]. Tail lanes load
// zeros, whose term is 0. Rows longer than kBlock compute e^-lv in place (no buffer, no reuse).
template <typename T>
struct IwaeLogWeightsFwd {
  template <int W>
  FASTVAE_INLINE static void run(const T* log_px_z, const T* z, const T* mu, const T* logvar,
                                 T* log_w, std::int64_t samples, std::int64_t batch,
                                 std::int64_t dim, std::int64_t begin, std::int64_t end) {
    using A = acc_t<T>;
    using V = vec_t<W, T>;
    constexpr int L = kLanesOf<V>;
    const bool buffered = dim <= kBlock;
    const std::int64_t block_columns = buffered ? kBlock / dim : 1;
    A inv_var[kBlock];
    for (std::int64_t b0 = begin; b0 < end; b0 += block_columns) {
      const std::int64_t columns = std::min(block_columns, end - b0);
      if (buffered) {
        // The block's logvar rows are contiguous: one flat pass.
        const T* block_logvar = logvar + b0 * dim;
        for_each_vector<L>(columns * dim, [&](std::int64_t i, int n)
                                              __attribute__((always_inline)) {
          store(inv_var + i, vexp(-load<V>(block_logvar + i, n)), n);
        });
      }
      for (std::int64_t k = 0; k < samples; ++k) {
        for (std::int64_t c = 0; c < columns; ++c) {
          const std::int64_t b = b0 + c;
          const std::int64_t row = k * batch + b;
          const T* z_row = z + row * dim;
          const T* mu_row = mu + b * dim;
          const T* lv_row = logvar + b * dim;
          const A* iv_row = inv_var + c * dim;
          V acc{};
          for_each_vector<L>(dim, [&](std::int64_t d, int n) __attribute__((always_inline)) {
            const V zs = load<V>(z_row + d, n);
            const V lv = load<V>(lv_row + d, n);
            const V iv = buffered ? load<V>(iv_row + d, n) : vexp(-lv);
            const V diff = zs - load<V>(mu_row + d, n);
            acc += diff * diff * iv + lv - zs * zs;
          });
          log_w[row] = from_acc<T>(to_acc(log_px_z[row]) + A(0.5) * hsum(acc));
        }
      }
    }
  }
};

// With s = (z - mu) e^-lv and g = grad[k, b]: grad_z = g (s - z), grad_mu = -sum_k g s,
// grad_lv = 0.5 sum_k g (1 - s (z - mu)). A block is `columns` columns of `width` elements from
// column c0 (all of D, or a slice of one long row); its e^-lv and the two sums live in buffers,
// the segments back to back.
template <typename T>
struct IwaeLogWeightsBwd {
  template <int W>
  FASTVAE_INLINE static void run(const T* grad, std::int64_t grad_stride_k,
                                 std::int64_t grad_stride_b, const T* z, const T* mu,
                                 const T* logvar, T* grad_z, T* grad_mu, T* grad_logvar,
                                 std::int64_t samples, std::int64_t batch, std::int64_t dim,
                                 std::int64_t begin, std::int64_t end) {
    using A = acc_t<T>;
    using V = vec_t<W, T>;
    constexpr int L = kLanesOf<V>;
    const ColumnBlocks blocks(dim);
    A inv_var[kBlock], sum_mu[kBlock], sum_logvar[kBlock];
    for (std::int64_t b0 = begin; b0 < end; b0 += blocks.columns) {
      const std::int64_t columns = std::min(blocks.columns, end - b0);
      for (std::int64_t c0 = 0; c0 < dim; c0 += blocks.width) {
        const std::int64_t width = std::min(blocks.width, dim - c0);
        // The segments' e^-lv and zeroed sums.
        for (std::int64_t c = 0; c < columns; ++c) {
          for_each_vector<L>(width, [&](std::int64_t d, int n) __attribute__((always_inline)) {
            const std::int64_t i = c * width + d;
            store(inv_var + i, vexp(-load<V>(logvar + (b0 + c) * dim + c0 + d, n)), n);
            store(sum_mu + i, V{}, n);
            store(sum_logvar + i, V{}, n);
          });
        }
        for (std::int64_t k = 0; k < samples; ++k) {
          for (std::int64_t c = 0; c < columns; ++c) {
            const std::int64_t b = b0 + c;
            const A g = to_acc(grad[k * grad_stride_k + b * grad_stride_b]);
            for_each_vector<L>(width, [&](std::int64_t d, int n) __attribute__((always_inline)) {
              const std::int64_t i = c * width + d;
              const std::int64_t offset = (k * batch + b) * dim + c0 + d;
              const V zs = load<V>(z + offset, n);
              const V diff = zs - load<V>(mu + b * dim + c0 + d, n);
              const V scaled = diff * load<V>(inv_var + i, n);
              store(grad_z + offset, g * (scaled - zs), n);
              store(sum_mu + i, load<V>(sum_mu + i, n) + g * scaled, n);
              store(sum_logvar + i, load<V>(sum_logvar + i, n) + g * (A(1) - scaled * diff), n);
            });
          }
        }
        for (std::int64_t c = 0; c < columns; ++c) {
          for_each_vector<L>(width, [&](std::int64_t d, int n) __attribute__((always_inline)) {
            const std::int64_t i = c * width + d;
            const std::int64_t offset = (b0 + c) * dim + c0 + d;
            store(grad_mu + offset, -load<V>(sum_mu + i, n), n);
            store(grad_logvar + offset, A(0.5) * load<V>(sum_logvar + i, n), n);
          });
        }
      }
    }
  }
};

// --- iwae_bound and miwae_bound ------------------------------------------------------------------

// log sum_k exp(log_w[k, m, b]) for NT vectors of columns (the last `n` lanes wide) at `offset` of
// sample row 0, stored to lse[...] (acc_t) and added to lse_sum.
template <int NT, typename V, typename T>
FASTVAE_INLINE void lse_tile(const T* log_w, elem_t<V>* lse, V* lse_sum, std::int64_t samples,
                             std::int64_t row_stride, std::int64_t offset, int n) {
  constexpr int L = kLanesOf<V>;
  const elem_t<V> neg_inf = -INFINITY;
  V max[NT], sum[NT], shift[NT];
  for (int t = 0; t < NT; ++t) {
    max[t] = splat<V>(neg_inf);
    sum[t] = V{};
  }
  for (std::int64_t k = 0; k < samples; ++k) {
    for (int t = 0; t < NT; ++t) {
      max[t] = vmax(max[t], load<V>(log_w + k * row_stride + offset + t * L, n, neg_inf));
    }
  }
  // Shift by the max where finite, else by 0: a -inf column sums exp(-inf) = 0, a +inf one
  // exp(+inf) = inf, instead of forming inf - inf.
  for (int t = 0; t < NT; ++t) {
    shift[t] = select(is_finite(max[t]), max[t], V{});
  }
  for (std::int64_t k = 0; k < samples; ++k) {
    for (int t = 0; t < NT; ++t) {
      sum[t] += vexp(load<V>(log_w + k * row_stride + offset + t * L, n, neg_inf) - shift[t]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    const V value = shift[t] + vlog(sum[t]);
    store(lse + t * L, value, n);
    lse_sum[t] += value;
  }
}

// lse[m, b] = log sum_k exp(log_w[k, m, b]) (acc_t) and bound[b] = mean_m lse[m, b] - log K, in
// tiles of kTile vectors of columns (several cache lines of each sample row per pass).
template <typename T>
struct IwaeBoundFwd {
  template <int W>
  FASTVAE_INLINE static void run(const T* log_w, T* bound, acc_t<T>* lse, std::int64_t samples,
                                 std::int64_t groups, std::int64_t batch) {
    using A = acc_t<T>;
    using V = vec_t<W, T>;
    constexpr int L = kLanesOf<V>;
    constexpr int kTile = 4;
    const std::int64_t row_stride = groups * batch;
    const A log_samples = static_cast<A>(std::log(static_cast<double>(samples)));
    // The mean over M as the reference takes it, sum / M (exact for IWAE's M = 1), minus log K.
    auto finish = [&](const V& lse_sum, std::int64_t b, int n) __attribute__((always_inline)) {
      store(bound + b, lse_sum / static_cast<A>(groups) - log_samples, n);
    };
    std::int64_t b = 0;
    for (; b + kTile * L <= batch; b += kTile * L) {
      V lse_sum[kTile] = {};
      for (std::int64_t m = 0; m < groups; ++m) {
        lse_tile<kTile>(log_w, lse + m * batch + b, lse_sum, samples, row_stride, m * batch + b,
                        L);
      }
      for (int t = 0; t < kTile; ++t) {
        finish(lse_sum[t], b + t * L, L);
      }
    }
    for (; b < batch; b += L) {
      const int n = static_cast<int>(std::min<std::int64_t>(L, batch - b));
      V lse_sum[1] = {};
      for (std::int64_t m = 0; m < groups; ++m) {
        lse_tile<1>(log_w, lse + m * batch + b, lse_sum, samples, row_stride, m * batch + b, n);
      }
      finish(lse_sum[0], b, n);
    }
  }
};

// grad_log_w[k, m, b] = grad[b] / M * exp(log_w[k, m, b] - lse[m, b]), 0 where lse[m, b] is not
// finite (the product with grad is still formed, so a NaN grad gives NaN, as the reference).
// Columns in blocks of kBlock whose scales grad[b] / M are gathered once.
template <typename T>
struct IwaeBoundBwd {
  template <int W>
  FASTVAE_INLINE static void run(const T* grad, std::int64_t grad_stride, const T* log_w,
                                 const acc_t<T>* lse, T* grad_log_w, std::int64_t samples,
                                 std::int64_t groups, std::int64_t batch) {
    using A = acc_t<T>;
    using V = vec_t<W, T>;
    constexpr int L = kLanesOf<V>;
    const std::int64_t row_stride = groups * batch;
    A scale[kBlock];
    for (std::int64_t b0 = 0; b0 < batch; b0 += kBlock) {
      const std::int64_t columns = std::min(kBlock, batch - b0);
      for (std::int64_t c = 0; c < columns; ++c) {
        scale[c] = to_acc(grad[(b0 + c) * grad_stride]) / static_cast<A>(groups);
      }
      for (std::int64_t k = 0; k < samples; ++k) {
        for (std::int64_t m = 0; m < groups; ++m) {
          const std::int64_t offset = k * row_stride + m * batch + b0;
          const A* lse_row = lse + m * batch + b0;
          for_each_vector<L>(columns, [&](std::int64_t c, int n) __attribute__((always_inline)) {
            const V shift = load<V>(lse_row + c, n);
            const V weight =
                select(is_finite(shift), vexp(load<V>(log_w + offset + c, n) - shift), V{});
            store(grad_log_w + offset + c, load<V>(scale + c, n) * weight, n);
          });
        }
      }
    }
  }
};

}  // namespace

// --- entry points --------------------------------------------------------------------------------

// The log-weights split the batch columns over threads (for_row_ranges, dtype.h), each column K
// samples of D elements of about a nanosecond; the bounds' few K x B elements per call stay on the
// calling thread.

void iwae_log_weights_fwd(int dtype, const void* log_px_z, const void* z, const void* mu,
                          const void* logvar, void* log_w, std::int64_t samples,
                          std::int64_t batch, std::int64_t dim) {
  dispatch_dtype(dtype, "iwae_log_weights_fwd: dtype", [&](auto tag) {
    using T = decltype(tag);
    if (samples == 0 || batch == 0 || dim == 0) {
      return;
    }
    for_row_ranges(batch, samples * dim, [&](auto begin, auto end) {
      launch<IwaeLogWeightsFwd<T>>(static_cast<const T*>(log_px_z), static_cast<const T*>(z),
                                   static_cast<const T*>(mu), static_cast<const T*>(logvar),
                                   static_cast<T*>(log_w), samples, batch, dim, begin, end);
    });
  });
}

void iwae_log_weights_bwd(int dtype, const void* grad, std::int64_t grad_stride_k,
                          std::int64_t grad_stride_b, const void* z, const void* mu,
                          const void* logvar, void* grad_z, void* grad_mu, void* grad_logvar,
                          std::int64_t samples, std::int64_t batch, std::int64_t dim) {
  dispatch_dtype(dtype, "iwae_log_weights_bwd: dtype", [&](auto tag) {
    using T = decltype(tag);
    if (samples == 0 || batch == 0 || dim == 0) {
      return;
    }
    for_row_ranges(batch, samples * dim, [&](auto begin, auto end) {
      launch<IwaeLogWeightsBwd<T>>(static_cast<const T*>(grad), grad_stride_k, grad_stride_b,
                                   static_cast<const T*>(z), static_cast<const T*>(mu),
                                   static_cast<const T*>(logvar), static_cast<T*>(grad_z),
                                   static_cast<T*>(grad_mu), static_cast<T*>(grad_logvar), samples,
                                   batch, dim, begin, end);
    });
  });
}

void iwae_bound_fwd(int dtype, const void* log_w, void* bound, void* lse, std::int64_t samples,
                    std::int64_t groups, std::int64_t batch) {
  dispatch_dtype(dtype, "iwae_bound_fwd: dtype", [&](auto tag) {
    using T = decltype(tag);
    if (samples == 0 || groups == 0 || batch == 0) {
      return;
    }
    launch<IwaeBoundFwd<T>>(static_cast<const T*>(log_w), static_cast<T*>(bound),
                             static_cast<acc_t<T>*>(lse), samples, groups, batch);
  });
}

void iwae_bound_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* log_w,
                    const void* lse, void* grad_log_w, std::int64_t samples, std::int64_t groups,
                    std::int64_t batch) {
  dispatch_dtype(dtype, "iwae_bound_bwd: dtype", [&](auto tag) {
    using T = decltype(tag);
    if (samples == 0 || groups == 0 || batch == 0) {
      return;
    }
    launch<IwaeBoundBwd<T>>(static_cast<const T*>(grad), grad_stride,
                             static_cast<const T*>(log_w), static_cast<const acc_t<T>*>(lse),
                             static_cast<T*>(grad_log_w), samples, groups, batch);
  });
}

}  // namespace fastvae::cpu
