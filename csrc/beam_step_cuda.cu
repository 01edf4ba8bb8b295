// CUDA constrained beam step: same semantics and shared arithmetic as
// beam_step.cpp (beam_step.h), two launches per step:
//   1. candidates: one warp per (user, beam) zeroes the beam's K key slots,
//      computes the log-sum-exp over the valid children only and writes one
//      unique 64-bit key per finite candidate at slot w * K + digit;
//   2. select: one block per user radix-selects the beam-th largest key
//      (8 passes of 8 bits; keys are unique so the threshold is exact),
//      gathers the winners, ranks them by counting, and fills missing slots
//      with the smallest non-candidate flat indices (the reference's order).
#include <cuda_runtime.h>

#include "beam_step.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

namespace sidmlp {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

__global__ void candidates_kernel(IndexView ix, BeamStepArgs args, uint64_t* keys,
                                  Status* status) {
  const int lane = threadIdx.x & 31;
  const int64_t gw = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t W = args.width;
  const int64_t K = args.K;
  if (gw >= args.batch * W) return;  // warp-uniform
  const int64_t b = gw / W;
  const int64_t w = gw % W;
  uint64_t* row_keys = keys + gw * K;
  for (int64_t t = lane; t < K; t += 32) row_keys[t] = 0;
  __syncwarp();

  const int level = args.level;
  const int64_t state = args.states[gw];
  const float bs = args.beam_scores[gw];
  bool alive = false;
  const Status st = check_beam(ix, level, state, bs, b, w, &alive);
  if (!st.ok()) {
    if (lane == 0) report(status, st);
    return;
  }
  if (!alive) return;
  int64_t cb = 0, ce = 0;
  const int32_t rc = child_range(ix, level, state, &cb, &ce);
  if (rc != kOk) {
    if (lane == 0) report(status, make_error(rc, b, w, static_cast<double>(state)));
    return;
  }
  const int64_t row = gw * K;

  float m = neg_inf();
  bool bad = false;
  for (int64_t c = cb + lane; c < ce; c += 32) {
    int64_t t = 0;
    if (child_token(ix, level, c, &t) != kOk) {
      report(status, make_error(kCorruptIndex, b, w, 0.0));
      bad = true;
      break;
    }
    const float x = load_logit(args.logits, row + t, args.logit_type);
    if (is_nan(x) || is_pos_inf(x)) {
      report(status, make_error(kBadLogit, b, w * K + t, x));
      bad = true;
      break;
    }
    m = fmaxf(m, x);
  }
  if (__any_sync(kFullMask, bad)) return;
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, off));
  if (is_neg_inf(m)) return;

  float sum = 0.0f;
  for (int64_t c = cb + lane; c < ce; c += 32) {
    sum += exp_shifted(load_logit(args.logits, row + ix.token[c], args.logit_type), m);
  }
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(kFullMask, sum, off);
  const float lse = log_sum_exp_finish(m, sum);

  for (int64_t c = cb + lane; c < ce; c += 32) {
    const int64_t t = ix.token[c];
    const float s = candidate_score(bs, load_logit(args.logits, row + t, args.logit_type), lse);
    if (!is_neg_inf(s)) row_keys[t] = candidate_key(s, static_cast<uint32_t>(w * K + t));
  }
}

// Inclusive block-wide prefix sum of one int per thread (Hillis-Steele);
// *total gets the block's sum. Must be called by every thread of the block.
__device__ int block_inclusive_scan(int value, int* scratch, int* total) {
  const int tid = threadIdx.x;
  scratch[tid] = value;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {
    const int add = tid >= off ? scratch[tid - off] : 0;
    __syncthreads();
    scratch[tid] += add;
    __syncthreads();
  }
  const int result = scratch[tid];
  *total = scratch[kThreads - 1];
  __syncthreads();
  return result;
}

__global__ void select_kernel(IndexView ix, BeamStepArgs args, const uint64_t* keys_all,
                              uint64_t* selected_all, Status* status) {
  __shared__ unsigned int hist[256];
  __shared__ int scan_scratch[kThreads];
  __shared__ unsigned long long s_prefix;
  __shared__ unsigned long long s_remaining;
  __shared__ unsigned long long s_found;
  __shared__ unsigned int s_gathered;

  const int tid = threadIdx.x;
  const int64_t b = blockIdx.x;
  const int64_t W = args.width;
  const int64_t K = args.K;
  const int64_t N = W * K;
  const int64_t beam = args.beam;
  const uint64_t* keys = keys_all + b * N;
  uint64_t* selected = selected_all + b * beam;
  float* out_scores = args.out_scores + b * beam;
  int64_t* out_parents = args.out_parents + b * beam;
  int64_t* out_tokens = args.out_tokens + b * beam;
  int64_t* out_states = args.out_states + b * beam;

  // Number of finite candidates F.
  if (tid == 0) {
    s_found = 0;
    s_gathered = 0;
  }
  __syncthreads();
  unsigned long long local = 0;
  for (int64_t i = tid; i < N; i += kThreads) local += keys[i] != 0 ? 1 : 0;
  atomicAdd(&s_found, local);
  __syncthreads();
  const int64_t found = static_cast<int64_t>(s_found);
  const int64_t k = found < beam ? found : beam;

  // Threshold: the k-th largest key (or every key when F <= beam).
  uint64_t threshold = 1;
  if (found > beam) {
    uint64_t prefix = 0, mask = 0;
    if (tid == 0) s_remaining = static_cast<unsigned long long>(beam);
    for (int shift = 56; shift >= 0; shift -= 8) {
      hist[tid] = 0;  // kThreads == 256 bins
      __syncthreads();
      for (int64_t i = tid; i < N; i += kThreads) {
        const uint64_t key = keys[i];
        if (key != 0 && (key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xFF], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        unsigned long long remaining = s_remaining, cum = 0;
        int digit = 0;
        for (int d = 255; d >= 0; --d) {
          if (cum + hist[d] >= remaining) {
            digit = d;
            break;
          }
          cum += hist[d];
        }
        s_remaining = remaining - cum;
        s_prefix = prefix | (static_cast<unsigned long long>(digit) << shift);
      }
      __syncthreads();
      prefix = s_prefix;
      mask |= static_cast<uint64_t>(0xFF) << shift;
      __syncthreads();
    }
    threshold = prefix;
  }

  // Gather the k winners (unordered), then place each by its rank.
  for (int64_t i = tid; i < N; i += kThreads) {
    const uint64_t key = keys[i];
    if (key != 0 && key >= threshold) {
      const unsigned int slot = atomicAdd(&s_gathered, 1u);
      if (slot < static_cast<unsigned int>(k)) selected[slot] = key;
    }
  }
  __syncthreads();
  for (int64_t i = tid; i < k; i += kThreads) {
    const uint64_t key = selected[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < k; ++j) rank += selected[j] > key ? 1 : 0;
    const uint32_t flat = key_flat(key);
    const int64_t parent = flat / K;
    const int64_t token = flat % K;
    int64_t child = -1;
    const int32_t rc = find_child(ix, args.level, args.states[b * W + parent], token, &child);
    if (rc != kOk || child < 0) report(status, make_error(kCorruptIndex, b, parent, 0.0));
    out_scores[rank] = key_score(key);
    out_parents[rank] = parent;
    out_tokens[rank] = token;
    out_states[rank] = child;
  }
  if (k == beam) return;  // block-uniform

  // Dead slots: smallest flat indices that are not finite candidates.
  int64_t filled = 0;
  const int64_t need = beam - k;
  for (int64_t start = 0; start < N && filled < need; start += kThreads) {
    const int64_t f = start + tid;
    const int z = (f < N && keys[f] == 0) ? 1 : 0;
    int total = 0;
    const int inclusive = block_inclusive_scan(z, scan_scratch, &total);
    const int64_t pos = filled + inclusive - z;
    if (z && pos < need) {
      const int64_t r = k + pos;
      out_scores[r] = neg_inf();
      out_parents[r] = f / K;
      out_tokens[r] = f % K;
      out_states[r] = -1;
    }
    filled += total;  // block-uniform, so the loop condition is too
  }
  if (filled > need) filled = need;
  for (int64_t r = k + filled + tid; r < beam; r += kThreads) {  // width * K < beam
    out_scores[r] = neg_inf();
    out_parents[r] = 0;
    out_tokens[r] = 0;
    out_states[r] = -1;
  }
}

}  // namespace

int64_t beam_step_workspace_bytes(int64_t batch, int64_t width, int64_t K, int64_t beam) {
  return static_cast<int64_t>(sizeof(uint64_t)) * (batch * width * K + batch * beam);
}

int launch_beam_step(const IndexView& ix, const BeamStepArgs& args, void* workspace,
                     Status* d_status, void* stream) {
  if (args.batch == 0) return static_cast<int>(cudaSuccess);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  uint64_t* keys = static_cast<uint64_t*>(workspace);
  uint64_t* selected = keys + args.batch * args.width * args.K;
  const int64_t warps = args.batch * args.width;
  if (warps > 0) {
    candidates_kernel<<<blocks_for(warps, kWarps), kThreads, 0, s>>>(ix, args, keys, d_status);
  }
  select_kernel<<<static_cast<unsigned int>(args.batch), kThreads, 0, s>>>(ix, args, keys,
                                                                            selected, d_status);
  return static_cast<int>(cudaGetLastError());
}

const char* error_string(int cuda_error) {
  return cudaGetErrorString(static_cast<cudaError_t>(cuda_error));
}

}  // namespace cuda
}  // namespace sidmlp
