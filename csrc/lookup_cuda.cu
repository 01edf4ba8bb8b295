// CUDA lookups: one thread per row / user, running the same per-row
// functions as the CPU ops (index.h, lookup.h).
#include <cuda_runtime.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "lookup.h"

namespace sidmlp {
namespace cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarpsPerBlock = 4;

__global__ void leaf_items_kernel(IndexView ix, const int64_t* states, int64_t n, int64_t* out,
                                  Status* status) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int32_t rc = leaf_item_of(ix, states[i], out + i);
  if (rc != kOk) {
    out[i] = -1;
    report(status, make_error(rc, i, -1, static_cast<double>(states[i])));
  }
}

__global__ void prefix_states_kernel(IndexView ix, const int64_t* prefixes, int64_t n,
                                     int64_t len, int64_t* out, Status* status) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t col = -1;
  const int32_t rc = prefix_state(ix, prefixes + i * len, len, out + i, &col);
  if (rc != kOk) {
    out[i] = -1;
    const double value = col >= 0 ? static_cast<double>(prefixes[i * len + col]) : 0.0;
    report(status, make_error(rc, i, col, value));
  }
}

__global__ void finalize_kernel(IndexView ix, const int64_t* states, const float* scores,
                                int64_t batch, int64_t width, int64_t top_n, int64_t* out_items,
                                int64_t* out_codes, float* out_scores, Status* status) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  const Status st = finalize_user(ix, states + b * width, scores + b * width, width, top_n, b,
                                  out_items + b * top_n, out_codes + b * top_n * ix.num_levels,
                                  out_scores + b * top_n);
  if (!st.ok()) report(status, st);
}

// One warp per beam row: lanes stride over the node's children, so the
// (coalesced) token reads and mask writes of wide shallow nodes (up to K
// children at the root) spread over 32 threads. `out` is zeroed by the caller.
__global__ void valid_mask_kernel(IndexView ix, int level, const int64_t* states, int64_t rows,
                                  int64_t width, uint8_t* out, Status* status) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (i >= rows) return;  // warp-uniform
  const int64_t state = states[i];
  if (state == -1) return;
  int64_t cb = 0, ce = 0;
  const int32_t rc = child_range(ix, level, state, &cb, &ce);
  if (rc != kOk) {
    if (lane == 0) report(status, make_error(rc, i / width, i % width, static_cast<double>(state)));
    return;
  }
  uint8_t* row = out + i * ix.K[level];
  for (int64_t c = cb + lane; c < ce; c += 32) {
    int64_t t = 0;
    if (child_token(ix, level, c, &t) != kOk) {
      report(status, make_error(kCorruptIndex, i / width, i % width, static_cast<double>(state)));
      return;
    }
    row[t] = 1;
  }
}

__global__ void advance_states_kernel(IndexView ix, int level, const int64_t* states,
                                      int64_t batch, int64_t width, const int64_t* parents,
                                      const int64_t* tokens, const float* scores, int64_t beam,
                                      int64_t* out, Status* status) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= batch * beam) return;
  const int64_t b = i / beam;
  const Status st = advance_slot(ix, level, states + b * width, width, parents[i], tokens[i],
                                 scores ? scores + i : nullptr, b, i % beam, out + i);
  if (!st.ok()) report(status, st);
}

}  // namespace

int launch_valid_mask(const IndexView& ix, int level, const int64_t* states, int64_t batch,
                      int64_t width, uint8_t* out, Status* d_status, void* stream) {
  const int64_t rows = batch * width;
  if (rows == 0) return static_cast<int>(cudaSuccess);
  valid_mask_kernel<<<blocks_for(rows, kWarpsPerBlock), kWarpsPerBlock * 32, 0,
                      static_cast<cudaStream_t>(stream)>>>(ix, level, states, rows, width, out,
                                                           d_status);
  return static_cast<int>(cudaGetLastError());
}

int launch_advance_states(const IndexView& ix, int level, const int64_t* states, int64_t batch,
                          int64_t width, const int64_t* parents, const int64_t* tokens,
                          const float* scores, int64_t beam, int64_t* out, Status* d_status,
                          void* stream) {
  const int64_t n = batch * beam;
  if (n == 0) return static_cast<int>(cudaSuccess);
  advance_states_kernel<<<blocks_for(n, kThreads), kThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(
      ix, level, states, batch, width, parents, tokens, scores, beam, out, d_status);
  return static_cast<int>(cudaGetLastError());
}

int launch_leaf_items(const IndexView& ix, const int64_t* states, int64_t n, int64_t* out,
                      Status* d_status, void* stream) {
  if (n == 0) return static_cast<int>(cudaSuccess);
  leaf_items_kernel<<<blocks_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      ix, states, n, out, d_status);
  return static_cast<int>(cudaGetLastError());
}

int launch_prefix_states(const IndexView& ix, const int64_t* prefixes, int64_t n, int64_t len,
                         int64_t* out, Status* d_status, void* stream) {
  if (n == 0) return static_cast<int>(cudaSuccess);
  prefix_states_kernel<<<blocks_for(n, kThreads), kThreads, 0,
                         static_cast<cudaStream_t>(stream)>>>(ix, prefixes, n, len, out,
                                                              d_status);
  return static_cast<int>(cudaGetLastError());
}

int launch_finalize(const IndexView& ix, const int64_t* states, const float* scores,
                    int64_t batch, int64_t width, int64_t top_n, int64_t* out_items,
                    int64_t* out_codes, float* out_scores, Status* d_status, void* stream) {
  if (batch == 0) return static_cast<int>(cudaSuccess);
  finalize_kernel<<<blocks_for(batch, kThreads), kThreads, 0,
                    static_cast<cudaStream_t>(stream)>>>(ix, states, scores, batch, width, top_n,
                                                         out_items, out_codes, out_scores,
                                                         d_status);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace sidmlp
