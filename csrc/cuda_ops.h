// Host-callable launchers of the CUDA implementations (csrc/*_cuda.cu).
//
// Plain C++ declarations: no CUDA or torch headers, so the binding layer can
// include this under SIDMLP_WITH_CUDA and the .cu files compile with bare
// nvcc. Every pointer is device memory except `ix`'s by-value fields; streams
// are cudaStream_t passed as void*. Kernels report the first input error
// into *d_status (device memory, zeroed by the caller) instead of asserting,
// so bad input never kills the CUDA context; the caller reads it back.
// Each launcher returns the cudaError_t of its launches as an int.
#pragma once

#include <cstdint>

#include "beam_step.h"
#include "common.h"
#include "index.h"

namespace sidmlp {
namespace cuda {

// Device scratch (bytes) that launch_beam_step needs: one 64-bit key per
// (user, beam, digit) and per (user, kept beam).
int64_t beam_step_workspace_bytes(int64_t batch, int64_t width, int64_t K, int64_t beam);

// args' pointers are device pointers; args must have passed check_beam_step_args.
int launch_beam_step(const IndexView& ix, const BeamStepArgs& args, void* workspace,
                     Status* d_status, void* stream);

int launch_leaf_items(const IndexView& ix, const int64_t* states, int64_t n, int64_t* out,
                      Status* d_status, void* stream);

int launch_prefix_states(const IndexView& ix, const int64_t* prefixes, int64_t n, int64_t len,
                         int64_t* out, Status* d_status, void* stream);

int launch_finalize(const IndexView& ix, const int64_t* states, const float* scores,
                    int64_t batch, int64_t width, int64_t top_n, int64_t* out_items,
                    int64_t* out_codes, float* out_scores, Status* d_status, void* stream);

// states (batch, width) -> out (batch, width, K_level) bytes; out must be zeroed.
int launch_valid_mask(const IndexView& ix, int level, const int64_t* states, int64_t batch,
                      int64_t width, uint8_t* out, Status* d_status, void* stream);

// scores may be null (see advance_slot in lookup.h).
int launch_advance_states(const IndexView& ix, int level, const int64_t* states, int64_t batch,
                          int64_t width, const int64_t* parents, const int64_t* tokens,
                          const float* scores, int64_t beam, int64_t* out, Status* d_status,
                          void* stream);

const char* error_string(int cuda_error);

}  // namespace cuda
}  // namespace sidmlp
