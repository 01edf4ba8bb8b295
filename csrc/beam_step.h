// One catalog-constrained beam step (docs/architecture.md, "Decoding semantics"), CPU and shared logic.
//
// For user b, beam w alive (state >= 0 and finite score), each valid child c
// (digit t) of the beam's node is a candidate with
//     score = beam_score[w] + (logit[w, t] - logsumexp_{valid children} logit[w, .])
// and the best `beam` candidates are kept, ties broken by the flat index
// w * K + t ascending (the reference's stable sort order). Slots left over are
// filled exactly as the reference's stable sort fills them: with the smallest
// flat indices that are not finite candidates, score -inf, state -1.
#pragma once

#include <vector>

#include "common.h"
#include "index.h"

#if !defined(__CUDACC__)
#include <cmath>
#endif

namespace sidmlp {

struct BeamStepArgs {
  const void* logits = nullptr;  // (batch, width, K) contiguous
  LogitType logit_type = LogitType::kFloat32;
  const float* beam_scores = nullptr;  // (batch, width)
  const int64_t* states = nullptr;     // (batch, width), local ids at `level`, -1 dead
  int64_t batch = 0;
  int64_t width = 0;
  int64_t K = 0;  // codebook size of `level`
  int level = 0;
  int64_t beam = 0;
  float* out_scores = nullptr;   // (batch, beam)
  int64_t* out_parents = nullptr;
  int64_t* out_tokens = nullptr;
  int64_t* out_states = nullptr;  // local ids at level + 1, -1 dead
};

// ---- arithmetic shared by every backend (so ties resolve identically) ----

SIDMLP_HD SIDMLP_INLINE float log_sum_exp_finish(float max_logit, float sum_exp) {
#if defined(__CUDA_ARCH__)
  return max_logit + logf(sum_exp);
#else
  return max_logit + std::log(sum_exp);
#endif
}

SIDMLP_HD SIDMLP_INLINE float exp_shifted(float x, float max_logit) {
#if defined(__CUDA_ARCH__)
  return expf(x - max_logit);
#else
  return std::exp(x - max_logit);
#endif
}

// Same operation order as the reference: (logit - lse) in float32, then + beam score.
SIDMLP_HD SIDMLP_INLINE float candidate_score(float beam_score, float logit, float lse) {
  const float logp = logit - lse;
  return beam_score + logp;
}

// Candidate a ranks before b: higher score, then lower flat index.
SIDMLP_HD SIDMLP_INLINE bool ranks_before(float score_a, uint32_t flat_a, float score_b,
                                          uint32_t flat_b) {
  return score_a > score_b || (score_a == score_b && flat_a < flat_b);
}

// Monotone map float -> uint32 (larger float, larger integer); -0 maps as +0.
SIDMLP_HD SIDMLP_INLINE uint32_t order_score(float s) {
  if (s == 0.0f) s = 0.0f;
  const uint32_t b = float_to_bits(s);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

SIDMLP_HD SIDMLP_INLINE float unorder_score(uint32_t u) {
  return bits_to_float((u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u);
}

// A unique 64-bit key per candidate whose descending order is the ranking
// order (score descending, flat index ascending). 0 means "no candidate":
// finite scores never map to it. Used by the GPU radix select.
SIDMLP_HD SIDMLP_INLINE uint64_t candidate_key(float score, uint32_t flat) {
  return (static_cast<uint64_t>(order_score(score)) << 32) |
         static_cast<uint64_t>(0xFFFFFFFFu - flat);
}

SIDMLP_HD SIDMLP_INLINE float key_score(uint64_t key) {
  return unorder_score(static_cast<uint32_t>(key >> 32));
}

SIDMLP_HD SIDMLP_INLINE uint32_t key_flat(uint64_t key) {
  return 0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFull);
}

// Validates one beam's inputs; *alive says whether it has candidates.
SIDMLP_HD SIDMLP_INLINE Status check_beam(const IndexView& ix, int level, int64_t state,
                                          float beam_score, int64_t b, int64_t w, bool* alive) {
  *alive = false;
  if (is_nan(beam_score) || is_pos_inf(beam_score)) {
    return make_error(kBadBeamScore, b, w, beam_score);
  }
  if (state < -1 || state >= ix.num_nodes(level)) {
    return make_error(kStateOutOfRange, b, w, static_cast<double>(state));
  }
  *alive = state >= 0 && !is_neg_inf(beam_score);
  return Status{};
}

// ---- host API -----------------------------------------------------------

struct Candidate {
  float score;
  uint32_t flat;
  int32_t child;  // local node id at level + 1
};

// Reusable per-thread buffers so the per-user loop never allocates.
struct BeamStepScratch {
  std::vector<Candidate> heap;
  std::vector<uint32_t> flats;
};

// Checks the shapes and sizes that the per-user loop relies on (level range,
// K matching the codebook, width * K < 2^32). Message names the argument.
bool check_beam_step_args(const IndexView& ix, const BeamStepArgs& args, std::string* error);

// Runs the step for user b, writing row b of the outputs. Single-threaded;
// callers parallelise across users.
Status beam_step_user(const IndexView& ix, const BeamStepArgs& args, int64_t b,
                      BeamStepScratch* scratch);

// All users in sequence (the ctest entry point; the torch op parallelises).
Status beam_step(const IndexView& ix, const BeamStepArgs& args);

}  // namespace sidmlp
