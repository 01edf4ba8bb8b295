// Device-only helpers shared by the .cu files.
#pragma once

#include <cuda_runtime.h>

#include "common.h"

namespace sidmlp {
namespace cuda {

// Records the first error of a launch; later ones are dropped.
__device__ __forceinline__ void report(Status* status, const Status& e) {
  if (atomicCAS(reinterpret_cast<int*>(&status->code), 0, static_cast<int>(e.code)) == 0) {
    status->row = e.row;
    status->col = e.col;
    status->value = e.value;
  }
}

inline unsigned int blocks_for(int64_t n, int threads) {
  return static_cast<unsigned int>((n + threads - 1) / threads);
}

}  // namespace cuda
}  // namespace sidmlp
