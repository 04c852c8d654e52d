// Gaussian op kernels, forward and backward: reparameterised sampling (with its KL to N(0, I)),
// the KL divergence between diagonal Gaussians, and the diagonal Gaussian log-density; and their
// launchers, declared in gaussian.h. The formulas are those of fastvae/reference/gaussian.py.
//
// Layout. Every kernel walks the canonical (R, D) tensors (contiguous, row-major: the op makes them
// so) row by row. A row belongs to a group of `lanes` consecutive threads: next_pow2(chunks per
// row), at most a warp, so short rows pack several to a warp; rows longer than kBlockRowChunks
// chunks take the whole block. A group's lanes stride along the row a chunk at a time (coalesced),
// and the row sums reduce over the group: a warp butterfly, or the block reduction. Groups stride
// over rows in a grid-stride loop, so any row count fits the grid limits. Incoming gradients are
// read through the strides the caller passes (autograd hands over expanded gradients of sums).
//
// Chunks. A thread moves CH elements at a time: with VEC (every canonical pointer 16-byte aligned
// and D a multiple of CH) CH = max(16 bytes of T, 4) elements as 16-byte vectors; otherwise 4
// scalar elements, the last chunk of a row masked. A chunk is one or two whole groups of four
// columns of the Philox stream, so a thread makes one Philox call per four elements.
//
// Precision. Arithmetic in acc_t<T> (float32; float64 for float64), results rounded once to T.
// The noise is the float32 stream of philox.cuh, widened to acc_t<T>. e^x - 1 is expm1 (accurate
// near 0, as the reference's torch.expm1). All offsets are int64.
#include "gaussian.h"

#include <cmath>
#include <cstdint>

#include "check.cuh"
#include "dispatch.cuh"
#include "launch.cuh"
#include "philox.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fastvae {

namespace {

// Rows of more chunks than this take a whole block (a warp would loop over more than 4 chunks per
// lane); shorter rows take next_pow2(chunks) <= 32 lanes.
constexpr std::int64_t kBlockRowChunks = 128;
constexpr double kLog2Pi = 1.8378770664093454836;

// Elements per chunk: a 16-byte vector, at least one Philox group of 4 (float64: two vectors).
template <typename T, bool VEC>
constexpr int kChunk = VEC && kVecWidth<T> > 4 ? kVecWidth<T> : 4;

// A grid's rows: groups of `lanes` consecutive threads, kThreads / lanes per block. Group g of
// block b takes rows b * groups + g, then every gridDim.x * groups further. Kernels loop over the
// block's first row, which is block-uniform, so every thread reaches the group reductions inside.
// Along its row, lane l takes the chunks of CH elements at columns l * CH, (l + lanes) * CH, ...
struct RowGroups {
  int lanes;  // a power of two <= kThreads
  int lane;   // this thread's index in its group
  int group;  // this thread's group in the block
  std::int64_t first;  // the block's first row
  std::int64_t step;   // rows per sweep of the grid

  __device__ explicit RowGroups(int lanes_)
      : lanes(lanes_),
        lane(static_cast<int>(threadIdx.x) & (lanes_ - 1)),
        group(static_cast<int>(threadIdx.x) / lanes_),
        first(static_cast<std::int64_t>(blockIdx.x) * (kThreads / lanes_)),
        step(static_cast<std::int64_t>(gridDim.x) * (kThreads / lanes_)) {}

  __device__ std::int64_t first_column(int chunk) const { return std::int64_t{lane} * chunk; }
  __device__ std::int64_t column_step(int chunk) const { return std::int64_t{lanes} * chunk; }
};

// Sum of `v` over the row's group (all threads of the block call it).
template <typename A>
__device__ __forceinline__ A row_sum(A v, int lanes) {
  return lanes <= kWarpSize ? warp_sum(v, lanes) : block_sum(v);
}

// The stream's normals of columns d0 .. d0 + CH - 1 of `row`, widened to A.
template <int CH, typename A>
__device__ __forceinline__ void stream_noise(std::uint64_t seed, std::int64_t row, std::int64_t d0,
                                             A (&eps)[CH]) {
  float normals[CH];
  stream_normals<CH>(seed, static_cast<std::uint64_t>(row), d0, normals);
#pragma unroll
  for (int i = 0; i < CH; ++i) {
    eps[i] = static_cast<A>(normals[i]);
  }
}

// The chunk of an incoming gradient at (row, d0) through strides: vectors where the launcher found
// them possible (`vec`: unit column stride, aligned rows), else strided scalars.
template <int CH, bool VEC, typename T>
__device__ __forceinline__ void load_grad_chunk(const T* grad, std::int64_t row, std::int64_t d0,
                                                std::int64_t count, std::int64_t stride_row,
                                                std::int64_t stride_col, bool vec,
                                                acc_t<T> (&out)[CH]) {
  const T* ptr = grad + row * stride_row + d0 * stride_col;
  if constexpr (VEC) {
    if (vec) {
      load_vec<CH>(ptr, out);
      return;
    }
  }
  load_scalar<CH>(ptr, count, out, acc_t<T>(0), stride_col);
}

// --- reparameterize and reparameterize_kl --------------------------------------------------------

// z = mu + e^(logvar/2) eps (eps from the stream unless HAS_EPS) and, with HAS_KL, the row KL
// 0.5 sum(mu^2 + expm1(logvar) - logvar). Masked elements load mu = logvar = 0, whose term is 0.
template <typename T, bool VEC, bool HAS_EPS, bool HAS_KL>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    reparameterize_fwd_kernel(const T* __restrict__ mu, const T* __restrict__ logvar,
                              const T* __restrict__ eps, T* __restrict__ z, T* __restrict__ kl,
                              std::int64_t rows, std::int64_t dim, std::uint64_t seed, int lanes) {
  using A = acc_t<T>;
  constexpr int CH = kChunk<T, VEC>;
  const RowGroups groups(lanes);
  for (std::int64_t first = groups.first; first < rows; first += groups.step) {
    const std::int64_t row = first + groups.group;
    A kl_sum = 0;
    if (row < rows) {
      const std::int64_t offset = row * dim;
      for (std::int64_t d0 = groups.first_column(CH); d0 < dim; d0 += groups.column_step(CH)) {
        const std::int64_t count = dim - d0;
        A m[CH], lv[CH], e[CH], out[CH];
        load<CH, VEC>(mu + offset + d0, count, m, A(0));
        load<CH, VEC>(logvar + offset + d0, count, lv, A(0));
        if constexpr (HAS_EPS) {
          load<CH, VEC>(eps + offset + d0, count, e, A(0));
        } else {
          stream_noise(seed, row, d0, e);
        }
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          out[i] = m[i] + exp(A(0.5) * lv[i]) * e[i];
          if constexpr (HAS_KL) {
            kl_sum += m[i] * m[i] + expm1(lv[i]) - lv[i];
          }
        }
        store<CH, VEC>(z + offset + d0, count, out);
      }
    }
    if constexpr (HAS_KL) {
      kl_sum = row_sum(kl_sum, lanes);
      if (row < rows && groups.lane == 0) {
        kl[row] = from_acc<T>(A(0.5) * kl_sum);
      }
    }
  }
}

// Gradients of reparameterize_fwd_kernel with stream noise, regenerated from `seed`:
// d logvar = g_z e^(logvar/2) eps / 2; with HAS_KL also d mu = g_z + g_kl mu and
// d logvar += g_kl expm1(logvar) / 2.
template <typename T, bool VEC, bool HAS_KL>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>) reparameterize_bwd_kernel(
    const T* __restrict__ grad_z, std::int64_t grad_z_stride_row, std::int64_t grad_z_stride_col,
    bool grad_z_vec, const T* __restrict__ grad_kl, std::int64_t grad_kl_stride,
    const T* __restrict__ mu, const T* __restrict__ logvar, T* __restrict__ grad_mu,
    T* __restrict__ grad_logvar, std::int64_t rows, std::int64_t dim, std::uint64_t seed,
    int lanes) {
  using A = acc_t<T>;
  constexpr int CH = kChunk<T, VEC>;
  const RowGroups groups(lanes);
  for (std::int64_t first = groups.first; first < rows; first += groups.step) {
    const std::int64_t row = first + groups.group;
    if (row >= rows) {
      continue;
    }
    A g_kl = 0;
    if constexpr (HAS_KL) {
      g_kl = to_acc(grad_kl[row * grad_kl_stride]);
    }
    const std::int64_t offset = row * dim;
    for (std::int64_t d0 = groups.first_column(CH); d0 < dim; d0 += groups.column_step(CH)) {
      const std::int64_t count = dim - d0;
      A g[CH], lv[CH], e[CH], out_logvar[CH];
      load_grad_chunk<CH, VEC>(grad_z, row, d0, count, grad_z_stride_row, grad_z_stride_col,
                               grad_z_vec, g);
      load<CH, VEC>(logvar + offset + d0, count, lv, A(0));
      stream_noise(seed, row, d0, e);
#pragma unroll
      for (int i = 0; i < CH; ++i) {
        A scaled = g[i] * exp(A(0.5) * lv[i]) * e[i];
        if constexpr (HAS_KL) {
          scaled += g_kl * expm1(lv[i]);
        }
        out_logvar[i] = A(0.5) * scaled;
      }
      store<CH, VEC>(grad_logvar + offset + d0, count, out_logvar);
      if constexpr (HAS_KL) {
        A m[CH], out_mu[CH];
        load<CH, VEC>(mu + offset + d0, count, m, A(0));
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          out_mu[i] = g[i] + g_kl * m[i];
        }
        store<CH, VEC>(grad_mu + offset + d0, count, out_mu);
      }
    }
  }
}

// --- gaussian_kl ---------------------------------------------------------------------------------

// The row KL to N(0, I), 0.5 sum(mu^2 + expm1(lv) - lv), or with HAS_PRIOR to N(mu_p, e^lv_p),
// 0.5 sum(expm1(lv - lv_p) - (lv - lv_p) + (mu - mu_p)^2 e^-lv_p). Masked elements load zeros,
// whose terms are 0.
template <typename T, bool VEC, bool HAS_PRIOR>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    gaussian_kl_fwd_kernel(const T* __restrict__ mu, const T* __restrict__ logvar,
                           const T* __restrict__ mu_p, const T* __restrict__ logvar_p,
                           T* __restrict__ kl, std::int64_t rows, std::int64_t dim, int lanes) {
  using A = acc_t<T>;
  constexpr int CH = kChunk<T, VEC>;
  const RowGroups groups(lanes);
  for (std::int64_t first = groups.first; first < rows; first += groups.step) {
    const std::int64_t row = first + groups.group;
    A sum = 0;
    if (row < rows) {
      const std::int64_t offset = row * dim;
      for (std::int64_t d0 = groups.first_column(CH); d0 < dim; d0 += groups.column_step(CH)) {
        const std::int64_t count = dim - d0;
        A m[CH], lv[CH];
        load<CH, VEC>(mu + offset + d0, count, m, A(0));
        load<CH, VEC>(logvar + offset + d0, count, lv, A(0));
        if constexpr (HAS_PRIOR) {
          A mp[CH], lvp[CH];
          load<CH, VEC>(mu_p + offset + d0, count, mp, A(0));
          load<CH, VEC>(logvar_p + offset + d0, count, lvp, A(0));
#pragma unroll
          for (int i = 0; i < CH; ++i) {
            const A diff = m[i] - mp[i];
            const A log_ratio = lv[i] - lvp[i];
            sum += expm1(log_ratio) - log_ratio + diff * diff * exp(-lvp[i]);
          }
        } else {
#pragma unroll
          for (int i = 0; i < CH; ++i) {
            sum += m[i] * m[i] + expm1(lv[i]) - lv[i];
          }
        }
      }
    }
    sum = row_sum(sum, lanes);
    if (row < rows && groups.lane == 0) {
      kl[row] = from_acc<T>(A(0.5) * sum);
    }
  }
}

// Gradients of gaussian_kl_fwd_kernel. Without a prior: d mu = g mu, d lv = g expm1(lv) / 2. With
// one: s = (mu - mu_p) e^-lv_p, h = expm1(lv - lv_p) / 2; d mu = g s, d lv = g h, d mu_p = -g s,
// d lv_p = -g (h + s (mu - mu_p) / 2).
template <typename T, bool VEC, bool HAS_PRIOR>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>) gaussian_kl_bwd_kernel(
    const T* __restrict__ grad, std::int64_t grad_stride, const T* __restrict__ mu,
    const T* __restrict__ logvar, const T* __restrict__ mu_p, const T* __restrict__ logvar_p,
    T* __restrict__ grad_mu, T* __restrict__ grad_logvar, T* __restrict__ grad_mu_p,
    T* __restrict__ grad_logvar_p, std::int64_t rows, std::int64_t dim, int lanes) {
  using A = acc_t<T>;
  constexpr int CH = kChunk<T, VEC>;
  const RowGroups groups(lanes);
  for (std::int64_t first = groups.first; first < rows; first += groups.step) {
    const std::int64_t row = first + groups.group;
    if (row >= rows) {
      continue;
    }
    const A g = to_acc(grad[row * grad_stride]);
    const std::int64_t offset = row * dim;
    for (std::int64_t d0 = groups.first_column(CH); d0 < dim; d0 += groups.column_step(CH)) {
      const std::int64_t count = dim - d0;
      A m[CH], lv[CH], out_mu[CH], out_logvar[CH];
      load<CH, VEC>(mu + offset + d0, count, m, A(0));
      load<CH, VEC>(logvar + offset + d0, count, lv, A(0));
      if constexpr (HAS_PRIOR) {
        A mp[CH], lvp[CH], out_mu_p[CH], out_logvar_p[CH];
        load<CH, VEC>(mu_p + offset + d0, count, mp, A(0));
        load<CH, VEC>(logvar_p + offset + d0, count, lvp, A(0));
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          const A diff = m[i] - mp[i];
          const A scaled_diff = diff * exp(-lvp[i]);
          const A half_expm1_ratio = A(0.5) * expm1(lv[i] - lvp[i]);
          out_mu[i] = g * scaled_diff;
          out_logvar[i] = g * half_expm1_ratio;
          out_mu_p[i] = -out_mu[i];
          out_logvar_p[i] = -g * (half_expm1_ratio + A(0.5) * scaled_diff * diff);
        }
        store<CH, VEC>(grad_mu_p + offset + d0, count, out_mu_p);
        store<CH, VEC>(grad_logvar_p + offset + d0, count, out_logvar_p);
      } else {
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          out_mu[i] = g * m[i];
          out_logvar[i] = A(0.5) * g * expm1(lv[i]);
        }
      }
      store<CH, VEC>(grad_mu + offset + d0, count, out_mu);
      store<CH, VEC>(grad_logvar + offset + d0, count, out_logvar);
    }
  }
}

// --- gaussian_log_prob ---------------------------------------------------------------------------

// Row -0.5 sum(log 2 pi + lv + (x - mu)^2 e^-lv), mu and lv 0 without HAS_MU, HAS_LOGVAR. Only the
// row's own elements add (log 2 pi would not vanish on a masked one).
template <typename T, bool VEC, bool HAS_MU, bool HAS_LOGVAR>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    gaussian_log_prob_fwd_kernel(const T* __restrict__ x, const T* __restrict__ mu,
                                 const T* __restrict__ logvar, T* __restrict__ out,
                                 std::int64_t rows, std::int64_t dim, int lanes) {
  using A = acc_t<T>;
  constexpr int CH = kChunk<T, VEC>;
  const RowGroups groups(lanes);
  for (std::int64_t first = groups.first; first < rows; first += groups.step) {
    const std::int64_t row = first + groups.group;
    A sum = 0;
    if (row < rows) {
      const std::int64_t offset = row * dim;
      for (std::int64_t d0 = groups.first_column(CH); d0 < dim; d0 += groups.column_step(CH)) {
        const std::int64_t count = dim - d0;
        A diff[CH], lv[CH];
        load<CH, VEC>(x + offset + d0, count, diff, A(0));
        if constexpr (HAS_MU) {
          A m[CH];
          load<CH, VEC>(mu + offset + d0, count, m, A(0));
#pragma unroll
          for (int i = 0; i < CH; ++i) {
            diff[i] -= m[i];
          }
        }
        if constexpr (HAS_LOGVAR) {
          load<CH, VEC>(logvar + offset + d0, count, lv, A(0));
        }
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          A term = diff[i] * diff[i];
          if constexpr (HAS_LOGVAR) {
            term = term * exp(-lv[i]) + lv[i];
          }
          if (VEC || i < count) {
            sum += term + A(kLog2Pi);
          }
        }
      }
    }
    sum = row_sum(sum, lanes);
    if (row < rows && groups.lane == 0) {
      out[row] = from_acc<T>(A(-0.5) * sum);
    }
  }
}

// Gradients of gaussian_log_prob_fwd_kernel: with s = (x - mu) e^-lv, d x = -g s, d mu = g s,
// d lv = g (s (x - mu) - 1) / 2.
template <typename T, bool VEC, bool HAS_MU, bool HAS_LOGVAR>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>) gaussian_log_prob_bwd_kernel(
    const T* __restrict__ grad, std::int64_t grad_stride, const T* __restrict__ x,
    const T* __restrict__ mu, const T* __restrict__ logvar, T* __restrict__ grad_x,
    T* __restrict__ grad_mu, T* __restrict__ grad_logvar, std::int64_t rows, std::int64_t dim,
    int lanes) {
  using A = acc_t<T>;
  constexpr int CH = kChunk<T, VEC>;
  const RowGroups groups(lanes);
  for (std::int64_t first = groups.first; first < rows; first += groups.step) {
    const std::int64_t row = first + groups.group;
    if (row >= rows) {
      continue;
    }
    const A g = to_acc(grad[row * grad_stride]);
    const std::int64_t offset = row * dim;
    for (std::int64_t d0 = groups.first_column(CH); d0 < dim; d0 += groups.column_step(CH)) {
      const std::int64_t count = dim - d0;
      A diff[CH], scaled_diff[CH], out[CH];
      load<CH, VEC>(x + offset + d0, count, diff, A(0));
      if constexpr (HAS_MU) {
        A m[CH];
        load<CH, VEC>(mu + offset + d0, count, m, A(0));
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          diff[i] -= m[i];
        }
      }
      if constexpr (HAS_LOGVAR) {
        A lv[CH];
        load<CH, VEC>(logvar + offset + d0, count, lv, A(0));
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          scaled_diff[i] = diff[i] * exp(-lv[i]);
          out[i] = A(0.5) * g * (scaled_diff[i] * diff[i] - A(1));
        }
        store<CH, VEC>(grad_logvar + offset + d0, count, out);
      } else {
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          scaled_diff[i] = diff[i];
        }
      }
      if constexpr (HAS_MU) {
#pragma unroll
        for (int i = 0; i < CH; ++i) {
          out[i] = g * scaled_diff[i];
        }
        store<CH, VEC>(grad_mu + offset + d0, count, out);
      }
#pragma unroll
      for (int i = 0; i < CH; ++i) {
        out[i] = -(g * scaled_diff[i]);
      }
      store<CH, VEC>(grad_x + offset + d0, count, out);
    }
  }
}

// --- launch configuration ------------------------------------------------------------------------

// Lanes per row and blocks of a row-walking launch over (rows, dim) with chunks of kChunk<T, VEC>.
struct RowLaunch {
  int lanes;
  unsigned int blocks;
};

template <typename T, bool VEC>
RowLaunch row_launch(std::int64_t rows, std::int64_t dim) {
  const std::int64_t chunks = ceil_div(dim, kChunk<T, VEC>);
  const int lanes = chunks > kBlockRowChunks
                        ? kThreads
                        : static_cast<int>(std::min<std::int64_t>(next_pow2(chunks), kWarpSize));
  return {lanes, grid_blocks(rows, kThreads / lanes)};
}

// Whether the canonical (R, D) tensors at `pointers` (null ones absent) take the VEC path.
template <typename T, typename... Pointers>
bool vector_path(std::int64_t dim, const Pointers*... pointers) {
  return dim % kChunk<T, true> == 0 && can_vectorize<T>(dim, pointers...);
}

// Whether an incoming (R, D) gradient with these strides can be read with vectors on the VEC path.
template <typename T>
bool grad_vector_path(const void* grad, std::int64_t stride_row, std::int64_t stride_col) {
  return stride_col == 1 && stride_row % kVecWidth<T> == 0 && is_aligned16(grad);
}

}  // namespace

void reparameterize_fwd(int dtype, const void* mu, const void* logvar, const void* eps, void* z,
                        void* kl, std::int64_t rows, std::int64_t dim, std::uint64_t seed,
                        cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "reparameterize_fwd: dtype", {
    if (rows == 0 || dim == 0) {
      return;
    }
    dispatch_bools(
        [&](auto vec, auto has_eps, auto has_kl) {
          constexpr bool VEC = decltype(vec)::value;
          const RowLaunch launch = row_launch<T, VEC>(rows, dim);
          reparameterize_fwd_kernel<T, VEC, decltype(has_eps)::value, decltype(has_kl)::value>
              <<<launch.blocks, kThreads, 0, stream>>>(
                  static_cast<const T*>(mu), static_cast<const T*>(logvar),
                  static_cast<const T*>(eps), static_cast<T*>(z), static_cast<T*>(kl), rows, dim,
                  seed, launch.lanes);
          FASTVAE_CHECK_LAUNCH(reparameterize_fwd_kernel);
        },
        vector_path<T>(dim, mu, logvar, eps, z), eps != nullptr, kl != nullptr);
  });
}

void reparameterize_bwd(int dtype, const void* grad_z, std::int64_t grad_z_stride_row,
                        std::int64_t grad_z_stride_col, const void* grad_kl,
                        std::int64_t grad_kl_stride, const void* mu, const void* logvar,
                        void* grad_mu, void* grad_logvar, std::int64_t rows, std::int64_t dim,
                        std::uint64_t seed, cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "reparameterize_bwd: dtype", {
    if (rows == 0 || dim == 0) {
      return;
    }
    const bool has_kl = grad_kl != nullptr;
    const bool grad_z_vec = grad_vector_path<T>(grad_z, grad_z_stride_row, grad_z_stride_col);
    dispatch_bools(
        [&](auto vec, auto kl) {
          constexpr bool VEC = decltype(vec)::value;
          const RowLaunch launch = row_launch<T, VEC>(rows, dim);
          reparameterize_bwd_kernel<T, VEC, decltype(kl)::value>
              <<<launch.blocks, kThreads, 0, stream>>>(
                  static_cast<const T*>(grad_z), grad_z_stride_row, grad_z_stride_col, grad_z_vec,
                  static_cast<const T*>(grad_kl), grad_kl_stride, static_cast<const T*>(mu),
                  static_cast<const T*>(logvar), static_cast<T*>(grad_mu),
                  static_cast<T*>(grad_logvar), rows, dim, seed, launch.lanes);
          FASTVAE_CHECK_LAUNCH(reparameterize_bwd_kernel);
        },
        vector_path<T>(dim, logvar, grad_logvar, has_kl ? mu : nullptr,
                       has_kl ? grad_mu : nullptr),
        has_kl);
  });
}

void gaussian_kl_fwd(int dtype, const void* mu, const void* logvar, const void* mu_p,
                     const void* logvar_p, void* kl, std::int64_t rows, std::int64_t dim,
                     cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "gaussian_kl_fwd: dtype", {
    if (rows == 0 || dim == 0) {
      return;
    }
    dispatch_bools(
        [&](auto vec, auto has_prior) {
          constexpr bool VEC = decltype(vec)::value;
          const RowLaunch launch = row_launch<T, VEC>(rows, dim);
          gaussian_kl_fwd_kernel<T, VEC, decltype(has_prior)::value>
              <<<launch.blocks, kThreads, 0, stream>>>(
                  static_cast<const T*>(mu), static_cast<const T*>(logvar),
                  static_cast<const T*>(mu_p), static_cast<const T*>(logvar_p),
                  static_cast<T*>(kl), rows, dim, launch.lanes);
          FASTVAE_CHECK_LAUNCH(gaussian_kl_fwd_kernel);
        },
        vector_path<T>(dim, mu, logvar, mu_p, logvar_p), mu_p != nullptr);
  });
}

void gaussian_kl_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* mu,
                     const void* logvar, const void* mu_p, const void* logvar_p, void* grad_mu,
                     void* grad_logvar, void* grad_mu_p, void* grad_logvar_p, std::int64_t rows,
                     std::int64_t dim, cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "gaussian_kl_bwd: dtype", {
    if (rows == 0 || dim == 0) {
      return;
    }
    dispatch_bools(
        [&](auto vec, auto has_prior) {
          constexpr bool VEC = decltype(vec)::value;
          const RowLaunch launch = row_launch<T, VEC>(rows, dim);
          gaussian_kl_bwd_kernel<T, VEC, decltype(has_prior)::value>
              <<<launch.blocks, kThreads, 0, stream>>>(
                  static_cast<const T*>(grad), grad_stride, static_cast<const T*>(mu),
                  static_cast<const T*>(logvar), static_cast<const T*>(mu_p),
                  static_cast<const T*>(logvar_p), static_cast<T*>(grad_mu),
                  static_cast<T*>(grad_logvar), static_cast<T*>(grad_mu_p),
                  static_cast<T*>(grad_logvar_p), rows, dim, launch.lanes);
          FASTVAE_CHECK_LAUNCH(gaussian_kl_bwd_kernel);
        },
        vector_path<T>(dim, mu, logvar, mu_p, logvar_p, grad_mu, grad_logvar, grad_mu_p,
                       grad_logvar_p),
        mu_p != nullptr);
  });
}

void gaussian_log_prob_fwd(int dtype, const void* x, const void* mu, const void* logvar, void* out,
                           std::int64_t rows, std::int64_t dim, cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "gaussian_log_prob_fwd: dtype", {
    if (rows == 0 || dim == 0) {
      return;
    }
    dispatch_bools(
        [&](auto vec, auto has_mu, auto has_logvar) {
          constexpr bool VEC = decltype(vec)::value;
          const RowLaunch launch = row_launch<T, VEC>(rows, dim);
          gaussian_log_prob_fwd_kernel<T, VEC, decltype(has_mu)::value, decltype(has_logvar)::value>
              <<<launch.blocks, kThreads, 0, stream>>>(
                  static_cast<const T*>(x), static_cast<const T*>(mu),
                  static_cast<const T*>(logvar), static_cast<T*>(out), rows, dim, launch.lanes);
          FASTVAE_CHECK_LAUNCH(gaussian_log_prob_fwd_kernel);
        },
        vector_path<T>(dim, x, mu, logvar), mu != nullptr, logvar != nullptr);
  });
}

void gaussian_log_prob_bwd(int dtype, const void* grad, std::int64_t grad_stride, const void* x,
                           const void* mu, const void* logvar, void* grad_x, void* grad_mu,
                           void* grad_logvar, std::int64_t rows, std::int64_t dim,
                           cudaStream_t stream) {
  FASTVAE_DISPATCH_FLOAT(dtype, T, "gaussian_log_prob_bwd: dtype", {
    if (rows == 0 || dim == 0) {
      return;
    }
    dispatch_bools(
        [&](auto vec, auto has_mu, auto has_logvar) {
          constexpr bool VEC = decltype(vec)::value;
          const RowLaunch launch = row_launch<T, VEC>(rows, dim);
          gaussian_log_prob_bwd_kernel<T, VEC, decltype(has_mu)::value, decltype(has_logvar)::value>
              <<<launch.blocks, kThreads, 0, stream>>>(
                  static_cast<const T*>(grad), grad_stride, static_cast<const T*>(x),
                  static_cast<const T*>(mu), static_cast<const T*>(logvar),
                  static_cast<T*>(grad_x), static_cast<T*>(grad_mu), static_cast<T*>(grad_logvar),
                  rows, dim, launch.lanes);
          FASTVAE_CHECK_LAUNCH(gaussian_log_prob_bwd_kernel);
        },
        vector_path<T>(dim, x, mu, logvar, grad_x, grad_mu, grad_logvar), mu != nullptr,
        logvar != nullptr);
  });
}

}  // namespace fastvae
