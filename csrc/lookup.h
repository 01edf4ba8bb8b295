// Final code -> item lookup and deduplication, shared by the CPU and CUDA ops.
#pragma once

#include "beam_step.h"
#include "common.h"
#include "index.h"

namespace sidmlp {

// Item id of a leaf state (-1 for a dead state -1).
SIDMLP_HD SIDMLP_INLINE int32_t leaf_item_of(const IndexView& ix, int64_t state, int64_t* item) {
  const int L = ix.num_levels;
  if (state == -1) {
    *item = -1;
    return kOk;
  }
  if (state < -1 || state >= ix.num_nodes(L)) return kStateOutOfRange;
  const int64_t v = ix.leaf_item[state];
  if (v < 0) return kCorruptIndex;
  *item = v;
  return kOk;
}

// Final beams of one user -> its top_n distinct items, best first.
// Entries are ranked by (score descending, position ascending), so beams that
// come sorted keep their order; dead entries (state -1 or score -inf) and
// repeats of an already chosen leaf are skipped; missing slots get item -1,
// codes -1 and score -inf. O((top_n + repeats) * (W + top_n)), no allocation,
// so one GPU thread runs it per user as well.
SIDMLP_HD SIDMLP_INLINE Status finalize_user(const IndexView& ix, const int64_t* states,
                                             const float* scores, int64_t width, int64_t top_n,
                                             int64_t b, int64_t* out_items, int64_t* out_codes,
                                             float* out_scores) {
  const int L = ix.num_levels;
  for (int64_t w = 0; w < width; ++w) {
    const float s = scores[w];
    if (is_nan(s) || is_pos_inf(s)) return make_error(kBadScore, b, w, s);
    if (states[w] < -1 || states[w] >= ix.num_nodes(L)) {
      return make_error(kStateOutOfRange, b, w, static_cast<double>(states[w]));
    }
  }
  // chosen slots hold leaf states in out_items until the end (then mapped).
  int64_t filled = 0;
  bool have_prev = false;
  float prev_score = 0.0f;
  uint32_t prev_pos = 0;
  while (filled < top_n) {
    int64_t best = -1;
    for (int64_t w = 0; w < width; ++w) {
      if (states[w] < 0 || is_neg_inf(scores[w])) continue;
      const uint32_t pos = static_cast<uint32_t>(w);
      if (have_prev && !ranks_before(prev_score, prev_pos, scores[w], pos)) continue;
      if (best < 0 || ranks_before(scores[w], pos, scores[best], static_cast<uint32_t>(best))) {
        best = w;
      }
    }
    if (best < 0) break;
    have_prev = true;
    prev_score = scores[best];
    prev_pos = static_cast<uint32_t>(best);
    bool repeat = false;
    for (int64_t r = 0; r < filled && !repeat; ++r) repeat = out_items[r] == states[best];
    if (repeat) continue;
    out_items[filled] = states[best];
    out_scores[filled] = scores[best];
    ++filled;
  }
  for (int64_t r = 0; r < filled; ++r) {
    const int64_t state = out_items[r];
    int32_t rc = state_digits(ix, L, state, out_codes + r * L);
    if (rc == kOk) rc = leaf_item_of(ix, state, out_items + r);
    if (rc != kOk) return make_error(rc, b, r, static_cast<double>(state));
  }
  for (int64_t r = filled; r < top_n; ++r) {
    out_items[r] = -1;
    out_scores[r] = neg_inf();
    for (int l = 0; l < L; ++l) out_codes[r * L + l] = -1;
  }
  return Status{};
}

// ---- host batch loops (the torch ops parallelise the same per-row calls) ----

// states (n,) at level L -> item ids (n,).
Status leaf_items(const IndexView& ix, const int64_t* states, int64_t n, int64_t* out);

// prefixes (n, len) -> states (n,) at level len (-1: not a catalog prefix).
Status prefix_states(const IndexView& ix, const int64_t* prefixes, int64_t n, int64_t len,
                     int64_t* out);

// states/scores (batch, width) at level L -> items (batch, top_n),
// codes (batch, top_n, L), scores (batch, top_n).
Status finalize(const IndexView& ix, const int64_t* states, const float* scores, int64_t batch,
                int64_t width, int64_t top_n, int64_t* out_items, int64_t* out_codes,
                float* out_scores);

}  // namespace sidmlp
