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

}  // namespace

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
