// Importance-weighted op kernels, forward and backward: the IWAE log-weights, and the IWAE / MIWAE
// log-mean-exp bounds; and their launchers, declared in iwae.h. The formulas are those of
// fastvae/reference/iwae.py; layouts are its canonical contiguous ones (the op makes them so),
// sample dim first: log_px_z, log_w (K, B), z (K, B, D), mu, logvar (B, D), MIWAE's log_w
// (K, M, B).
//
// - iwae_log_weights: one pass over z. A row (k, b) of z belongs to a group of next_pow2(chunks)
//   <= 32 lanes, which sums it with a warp butterfly. A block's groups take a tile of columns b and
//   a slice of the samples each, so the groups on one column share its mu / logvar row through L1;
//   when the columns alone give too few blocks, the samples are split over gridDim.y too.
// - its backward writes grad_z and sums grad_mu, grad_logvar over the K samples without atomics,
//   in the same order run to run: the (B, D) plane is a flat run of chunks (a 16-byte vector of one
//   row, or 4 scalars off the vector path), and a block takes tiles of `lanes` consecutive chunks
//   (contiguous in mu and in each sample of z where rows are whole vectors), each chunk's samples
//   split over kThreads / lanes slices that sum in registers, then fold through a warp butterfly
//   and shared memory. The tiles narrow (more slices, fewer samples each) while they give fewer
//   than kTargetBlocks blocks, so a short batch fills the GPU too: at K = 64, D = 128 in float32,
//   B = 64 makes 512 blocks of one sample a thread, B = 4,096 1,024 blocks of 32.
// - the bounds: a block owns a tile of contiguous columns (coalesced rows of log_w) and splits the
//   K samples into slices; each thread streams an online log-sum-exp over its slice (reduce.cuh's
//   LogSumExp, four samples a step), then the slices merge: a strided warp butterfly where a warp
//   holds several slices, shared memory across warps. MIWAE loops over its M groups per column.
//   Few columns make narrow tiles with many slices, so long K still fills the GPU.
// - the bounds' backward is element-wise: normalised weights exp(log_w - lse) from the saved
//   log-sum-exp, zero where it is not finite; column tiles by sample splits.
//
// Arithmetic in acc_t<T> (float32; float64 for float64), results rounded once to T, log-sum-exps
// kept in acc_t<T>. z, grad_z, mu and logvar move as 16-byte vectors when aligned (vec.cuh). All
// offsets are int64; grids respect CUDA's limits (grid-stride loops over columns, gridDim.y
// <= 65535 sample splits).
#include "iwae.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "check.cuh"
#include "dispatch.cuh"
#include "launch.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fastvae {

namespace {

// Elements a thread moves at once: one 16-byte vector, or 4 scalars off the vector path.
template <typename T, bool VEC>
constexpr int kChunk = VEC ? kVecWidth<T> : 4;

// Samples a bound thread reads per step of its online log-sum-exp (independent loads in flight).
constexpr int kLseUnroll = 4;

// --- iwae_log_weights ----------------------------------------------------------------------------

// log_w[k, b] = log_px_z[k, b] + 0.5 sum_d ((z - mu)^2 e^-lv + lv - z^2)[k, b, d]. Groups of
// `lanes` threads; group g of the block takes column b = tile * columns + g / k_slices and samples
// k = k0 + g % k_slices for k0 = k_begin, k_begin + k_slices, ... < k_end (k_begin from
// blockIdx.y). Both loops are block-uniform, so the warp butterflies see every lane. Masked
// elements load zeros, whose term is 0.
template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>) iwae_log_weights_fwd_kernel(
    const T* __restrict__ log_px_z, const T* __restrict__ z, const T* __restrict__ mu,
    const T* __restrict__ logvar, T* __restrict__ log_w, std::int64_t samples, std::int64_t batch,
    std::int64_t dim, int lanes, int k_slices, std::int64_t k_chunk) {
  using A = acc_t<T>;
  constexpr int CH = kChunk<T, VEC>;
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int group = static_cast<int>(threadIdx.x) / lanes;
  const int columns = kThreads / lanes / k_slices;
  const int column = group / k_slices;
  const int slice = group % k_slices;
  const std::int64_t k_begin = static_cast<std::int64_t>(blockIdx.y) * k_chunk;
  const std::int64_t k_end = samples - k_begin < k_chunk ? samples : k_begin + k_chunk;
  for (std::int64_t b0 = static_cast<std::int64_t>(blockIdx.x) * columns; b0 < batch;
       b0 += static_cast<std::int64_t>(gridDim.x) * columns) {
    const std::int64_t b = b0 + column;
    for (std::int64_t k0 = k_begin; k0 < k_end; k0 += k_slices) {
      const std::int64_t k = k0 + slice;
      const bool valid = b < batch && k < k_end;
      const std::int64_t row = k * batch + b;
      A sum = 0;
      if (valid) {
        for (std::int64_t d0 = std::int64_t{lane} * CH; d0 < dim; d0 += std::int64_t{lanes} * CH) {
          const std::int64_t count = dim - d0;
          A zs[CH], m[CH], lv[CH];
          load<CH, VEC>(z + row * dim + d0, count, zs, A(0));
          load<CH, VEC>(mu + b * dim + d0, count, m, A(0));
          load<CH, VEC>(logvar + b * dim + d0, count, lv, A(0));
#pragma unroll
          for (int i = 0; i < CH; ++i) {
            const A diff = zs[i] - m[i];
            sum += diff * diff * exp(-lv[i]) + lv[i] - zs[i] * zs[i];
          }
        }
      }
      sum = warp_sum(sum, lanes);
      if (valid && lane == 0) {
        log_w[row] = from_acc<T>(to_acc(log_px_z[row]) + A(0.5) * sum);
      }
    }
  }
}

// With s = (z - mu) e^-lv and g = grad[k, b]: grad_z = g (s - z), grad_mu = -sum_k g s,
// grad_lv = 0.5 sum_k g (1 - s (z - mu)). The (B, D) plane is a flat sequence of chunks of CH
// elements of one row (a row's last chunk may be partial off the vector path), `chunks` per row.
// A block sweeps tiles of `lanes` consecutive chunks;
// thread (slice, lane) = (tid / lanes, tid % lanes) takes chunk lane of the tile and sums samples
// slice, slice + slices, ... in registers. The slices then fold in a fixed order (the same run to
// run): a strided warp butterfly over those in one warp, shared memory across the warps, and
// slice 0 stores the chunk's grad_mu and grad_logvar. The tile loop and the fold's branches are
// block-uniform, so the butterflies and barriers see every thread.
template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>) iwae_log_weights_bwd_kernel(
    const T* __restrict__ grad, std::int64_t grad_stride_k, std::int64_t grad_stride_b,
    const T* __restrict__ z, const T* __restrict__ mu, const T* __restrict__ logvar,
    T* __restrict__ grad_z, T* __restrict__ grad_mu, T* __restrict__ grad_logvar,
    std::int64_t samples, std::int64_t batch, std::int64_t dim, int lanes) {
  using A = acc_t<T>;
  constexpr int CH = kChunk<T, VEC>;
  // Element i of a lane's sums over slice group g at [(i * groups + g) * lanes + lane]: at most
  // CH * kThreads entries, written and read conflict-free.
  __shared__ A partial_mu[CH * kThreads];
  __shared__ A partial_logvar[CH * kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & (lanes - 1);
  const int slice = tid / lanes;
  const int slices = kThreads / lanes;
  // Slices of a lane within one warp, merged by the butterfly; the groups of them across warps.
  const int warp_slices = lanes < kWarpSize ? kWarpSize / lanes : 1;
  const int groups = slices / warp_slices;
  const std::int64_t chunks = ceil_div(dim, CH);
  const std::int64_t total = batch * chunks;
  for (std::int64_t c0 = static_cast<std::int64_t>(blockIdx.x) * lanes; c0 < total;
       c0 += static_cast<std::int64_t>(gridDim.x) * lanes) {
    const std::int64_t c = c0 + lane;
    const std::int64_t b = c / chunks;
    const std::int64_t d0 = (c - b * chunks) * CH;
    const std::int64_t count = dim - d0;
    A sum_mu[CH] = {}, sum_logvar[CH] = {};
    if (c < total) {
      A m[CH], inv_var[CH];
      load<CH, VEC>(mu + b * dim + d0, count, m, A(0));
      load<CH, VEC>(logvar + b * dim + d0, count, inv_var, A(0));
#pragma unroll
      for (int i = 0; i < CH; ++i) {
        inv_var[i] = exp(-inv_var[i]);
      }
      // The thread's first sample, and the steps to its next one in grad and in z / grad_z.
      const T* g_at = grad + slice * grad_stride_k + b * grad_stride_b;
      const std::int64_t first = (slice * batch + b) * dim + d0;
      const T* z_at = z + first;
      T* grad_z_at = grad_z + first;
      const std::int64_t g_step = slices * grad_stride_k;
      const std::int64_t z_step = slices * batch * dim;
#pragma unroll 2
      for (std::int64_t k = slice; k < samples;
           k += slices, g_at += g_step, z_at += z_step, grad_z_at += z_step) {
        const A g = to_acc(*g_at);
        A zs[CH], out[CH];
        load<CH, VEC>(z_at, count, zs, A(0));
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          const A diff = zs[i] - m[i];
          const A scaled = diff * inv_var[i];
          out[i] = g * (scaled - zs[i]);
          sum_mu[i] += g * scaled;
          sum_logvar[i] += g * (A(1) - scaled * diff);
        }
        store<CH, VEC>(grad_z_at, count, out);
      }
    }
#pragma unroll
    for (int i = 0; i < CH; ++i) {
      sum_mu[i] = warp_reduce_strided(sum_mu[i], SumOp{}, lanes);
      sum_logvar[i] = warp_reduce_strided(sum_logvar[i], SumOp{}, lanes);
    }
    if (groups > 1) {
      if (slice % warp_slices == 0) {
        const int group = slice / warp_slices;
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          partial_mu[(i * groups + group) * lanes + lane] = sum_mu[i];
          partial_logvar[(i * groups + group) * lanes + lane] = sum_logvar[i];
        }
      }
      __syncthreads();
      if (slice == 0) {
        for (int group = 1; group < groups; ++group) {
#pragma unroll
          for (int i = 0; i < CH; ++i) {
            sum_mu[i] += partial_mu[(i * groups + group) * lanes + lane];
            sum_logvar[i] += partial_logvar[(i * groups + group) * lanes + lane];
          }
        }
      }
      __syncthreads();
    }
    if (slice == 0 && c < total) {
#pragma unroll
      for (int i = 0; i < CH; ++i) {
        sum_mu[i] = -sum_mu[i];
        sum_logvar[i] *= A(0.5);
      }
      store<CH, VEC>(grad_mu + b * dim + d0, count, sum_mu);
      store<CH, VEC>(grad_logvar + b * dim + d0, count, sum_logvar);
    }
  }
}

// --- iwae_bound and miwae_bound ------------------------------------------------------------------

// lse[m, b] = log sum_k exp(log_w[k, m, b]), bound[b] = mean_m lse[m, b] - log K. Thread
// (slice, c) = (tid / columns, tid % columns) of a block streams samples slice, slice + slices, ...
// of column b = tile * columns + c; the tile and group loops are block-uniform.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    iwae_bound_fwd_kernel(const T* __restrict__ log_w, T* __restrict__ bound,
                          acc_t<T>* __restrict__ lse, std::int64_t samples, std::int64_t groups,
                          std::int64_t batch, int columns) {
  using A = acc_t<T>;
  __shared__ LogSumExp<A> partial[kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid & (columns - 1);
  const int slice = tid / columns;
  const int slices = kThreads / columns;
  // Slices of a column within one warp, merged by the warp butterfly before shared memory.
  const int warp_slices = columns < kWarpSize ? kWarpSize / columns : 1;
  const std::int64_t row_stride = groups * batch;
  for (std::int64_t b0 = static_cast<std::int64_t>(blockIdx.x) * columns; b0 < batch;
       b0 += static_cast<std::int64_t>(gridDim.x) * columns) {
    const std::int64_t b = b0 + c;
    const bool valid = b < batch;
    A lse_sum = 0;
    for (std::int64_t m = 0; m < groups; ++m) {
      LogSumExp<A> state = LogSumExp<A>::empty();
      if (valid) {
        const T* column = log_w + m * batch + b;
        for (std::int64_t k = slice; k < samples; k += std::int64_t{kLseUnroll} * slices) {
          A x[kLseUnroll];
#pragma unroll
          for (int u = 0; u < kLseUnroll; ++u) {
            const std::int64_t kk = k + std::int64_t{u} * slices;
            x[u] = kk < samples ? to_acc(column[kk * row_stride]) : A(-INFINITY);
          }
          state.add(x);
        }
      }
      state = warp_reduce_strided(state, LogSumExpMerge{}, columns);
      if (slice % warp_slices == 0) {
        partial[(slice / warp_slices) * columns + c] = state;
      }
      __syncthreads();
      if (slice == 0) {
        for (int j = 1; j < slices / warp_slices; ++j) {
          state = state.merge(partial[j * columns + c]);
        }
        const A value = state.value();
        if (valid) {
          lse[m * batch + b] = value;
        }
        lse_sum += value;
      }
      __syncthreads();
    }
    if (slice == 0 && valid) {
      bound[b] = from_acc<T>(lse_sum / static_cast<A>(groups) - log(static_cast<A>(samples)));
    }
  }
}

// grad_log_w[k, m, b] = grad[b] / M * exp(log_w[k, m, b] - lse[m, b]), 0 where lse[m, b] is not
// finite. Thread (slice, c) of a block takes column b = tile * columns + c and samples
// k_begin + slice, k_begin + slice + slices, ... < k_end (k_begin from blockIdx.y).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>) iwae_bound_bwd_kernel(
    const T* __restrict__ grad, std::int64_t grad_stride, const T* __restrict__ log_w,
    const acc_t<T>* __restrict__ lse, T* __restrict__ grad_log_w, std::int64_t samples,
    std::int64_t groups, std::int64_t batch, int columns, std::int64_t k_chunk) {
  using A = acc_t<T>;
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid & (columns - 1);
  const int slice = tid / columns;
  const int slices = kThreads / columns;
  const std::int64_t row_stride = groups * batch;
  const std::int64_t k_begin = static_cast<std::int64_t>(blockIdx.y) * k_chunk;
  const std::int64_t k_end = samples - k_begin < k_chunk ? samples : k_begin + k_chunk;
  for (std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * columns + c; b < batch;
       b += static_cast<std::int64_t>(gridDim.x) * columns) {
    const A scale = to_acc(grad[b * grad_stride]) / static_cast<A>(groups);
    for (std::int64_t m = 0; m < groups; ++m) {
      const A shift = lse[m * batch + b];
      const bool finite = isfinite(shift);
#pragma unroll 4
      for (std::int64_t k = k_begin + slice; k < k_end; k += slices) {
        const std::int64_t offset = k * row_stride + m * batch + b;
        const A weight = finite ? exp(to_acc(log_w[offset]) - shift) : A(0);
        grad_log_w[offset] = from_acc<T>(scale * weight);
      }
    }
  }
}

// --- launch configuration ------------------------------------------------------------------------

// Columns per block of a kernel whose block is `columns` columns side by side, each split into
// kThreads / columns slices of its K samples (a power of two <= kThreads): the bounds (columns of
// log_w) and the log-weights' backward (chunks of the (B, D) plane). No wider than
// next_pow2(columns), and narrowed (less coalescing, more slices) while the tiles give fewer than
// kTargetBlocks blocks, but never to more slices than next_pow2(samples).
int block_columns(std::int64_t columns, std::int64_t samples) {
  const std::int64_t fewest = kThreads / next_pow2(std::min<std::int64_t>(samples, kThreads));
  std::int64_t width = kThreads;
  while (width > fewest && (width / 2 >= columns || ceil_div(columns, width) < kTargetBlocks)) {
    width /= 2;
  }
  return static_cast<int>(width);
}

// Splits of the samples over gridDim.y for `blocks_x` blocks of columns, `step` samples per block
// sweep: as many as kTargetBlocks asks, within CUDA's gridDim.y limit. Returns samples per split,
// a multiple of `step`.
std::int64_t sample_chunk(std::int64_t samples, std::int64_t step, unsigned int blocks_x) {
  const std::int64_t steps = ceil_div(samples, step);
  const std::int64_t splits =
      std::clamp(ceil_div(kTargetBlocks, blocks_x), std::int64_t{1}, std::min(steps, kMaxGridY));
  return ceil_div(steps, splits) * step;
}

}  // namespace

void iwae_log_weights_fwd(int dtype, const void* log_px_z, const void* z, const void* mu,
                          const void* logvar, void* log_w, std::int64_t samples,
                          std::int64_t batch, std::int64_t dim, cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "iwae_log_weights_fwd: dtype", {
    if (samples == 0 || batch == 0 || dim == 0) {
      return;
    }
    dispatch_bools(
        [&](auto vec) {
          constexpr bool VEC = decltype(vec)::value;
          const int lanes = static_cast<int>(
              std::min<std::int64_t>(next_pow2(ceil_div(dim, kChunk<T, VEC>)), kWarpSize));
          const int groups = kThreads / lanes;
          const int k_slices =
              static_cast<int>(next_pow2(std::min<std::int64_t>(samples, groups)));
          const unsigned int blocks_x = grid_blocks(batch, groups / k_slices);
          const std::int64_t k_chunk = sample_chunk(samples, k_slices, blocks_x);
          const dim3 grid(blocks_x, static_cast<unsigned int>(ceil_div(samples, k_chunk)));
          iwae_log_weights_fwd_kernel<T, VEC><<<grid, kThreads, 0, stream>>>(
              static_cast<const T*>(log_px_z), static_cast<const T*>(z), static_cast<const T*>(mu),
              static_cast<const T*>(logvar), static_cast<T*>(log_w), samples, batch, dim, lanes,
              k_slices, k_chunk);
          FASTVAE_CHECK_LAUNCH(iwae_log_weights_fwd_kernel);
        },
        can_vectorize<T>(dim, z, mu, logvar));
  });
}

void iwae_log_weights_bwd(int dtype, const void* grad, std::int64_t grad_stride_k,
                          std::int64_t grad_stride_b, const void* z, const void* mu,
                          const void* logvar, void* grad_z, void* grad_mu, void* grad_logvar,
                          std::int64_t samples, std::int64_t batch, std::int64_t dim,
                          cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "iwae_log_weights_bwd: dtype", {
    if (samples == 0 || batch == 0 || dim == 0) {
      return;
    }
    dispatch_bools(
        [&](auto vec) {
          constexpr bool VEC = decltype(vec)::value;
          // The chunks of the (B, D) plane, a block's tile of `lanes` of them side by side.
          const std::int64_t plane_chunks = batch * ceil_div(dim, kChunk<T, VEC>);
          const int lanes = block_columns(plane_chunks, samples);
          const unsigned int blocks = grid_blocks(plane_chunks, lanes);
          iwae_log_weights_bwd_kernel<T, VEC><<<blocks, kThreads, 0, stream>>>(
              static_cast<const T*>(grad), grad_stride_k, grad_stride_b, static_cast<const T*>(z),
              static_cast<const T*>(mu), static_cast<const T*>(logvar), static_cast<T*>(grad_z),
              static_cast<T*>(grad_mu), static_cast<T*>(grad_logvar), samples, batch, dim, lanes);
          FASTVAE_CHECK_LAUNCH(iwae_log_weights_bwd_kernel);
        },
        can_vectorize<T>(dim, z, mu, logvar, grad_z));
  });
}

void iwae_bound_fwd(int dtype, const void* log_w, void* bound, void* lse, std::int64_t samples,
                    std::int64_t groups, std::int64_t batch, cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "iwae_bound_fwd: dtype", {
    if (samples == 0 || groups == 0 || batch == 0) {
      return;
    }
    const int columns = block_columns(batch, samples);
    iwae_bound_fwd_kernel<T><<<grid_blocks(batch, columns), kThreads, 0, stream>>>(
        static_cast<const T*>(log_w), static_cast<T*>(bound), static_cast<acc_t<T>*>(lse), samples,
        groups, batch, columns);
    FASTVAE_CHECK_LAUNCH(iwae_bound_fwd_kernel);
  });
}

void iwae_bound_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* log_w,
                    const void* lse, void* grad_log_w, std::int64_t samples, std::int64_t groups,
                    std::int64_t batch, cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "iwae_bound_bwd: dtype", {
    if (samples == 0 || groups == 0 || batch == 0) {
      return;
    }
    const int columns = block_columns(batch, samples);
    const unsigned int blocks_x = grid_blocks(batch, columns);
    const std::int64_t k_chunk = sample_chunk(samples, kThreads / columns, blocks_x);
    const dim3 grid(blocks_x, static_cast<unsigned int>(ceil_div(samples, k_chunk)));
    iwae_bound_bwd_kernel<T><<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(grad), grad_stride, static_cast<const T*>(log_w),
        static_cast<const acc_t<T>*>(lse), static_cast<T*>(grad_log_w), samples, groups, batch,
        columns, k_chunk);
    FASTVAE_CHECK_LAUNCH(iwae_bound_bwd_kernel);
  });
}

}  // namespace fastvae
