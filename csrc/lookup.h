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

// ---- per-beam masks and transitions (the Triton decode path) ----------------
//
// The fused Triton step takes a dense (batch, width, K) validity mask and
// returns (parents, tokens); these two functions are the index's side of
// that contract: mask rows from trie states, then the kept slots' new states.

// Marks the valid children of one beam at `level` (0 <= level < L) in its
// mask row out[0..K_level), which the caller zeroed: out[t] = 1 where digit t
// extends the beam's prefix to a catalog prefix. A dead state -1 marks
// nothing. O(children of the node).
SIDMLP_HD SIDMLP_INLINE int32_t mark_valid_children(const IndexView& ix, int level, int64_t state,
                                                    uint8_t* out) {
  if (state == -1) return kOk;
  int64_t cb = 0, ce = 0;
  int32_t rc = child_range(ix, level, state, &cb, &ce);
  if (rc != kOk) return rc;
  for (int64_t c = cb; c < ce; ++c) {
    int64_t t = 0;
    rc = child_token(ix, level, c, &t);
    if (rc != kOk) return rc;
    out[t] = 1;
  }
  return kOk;
}

// New state (at level + 1) of kept slot r of user b, whose parent beam and
// digit a beam step chose; states_row is the user's (width,) states at
// `level`. -1 when the slot is dead (score -inf, when score is given: its
// parent and token are placeholders then and go unchecked), when the parent
// beam is dead, or when the digit names no catalog prefix. Errors: a parent
// outside [0, width) (col = r), a digit outside the codebook (col = r), a
// parent state that is no node of `level` (col = the parent beam), a NaN or
// +inf score (col = r).
SIDMLP_HD SIDMLP_INLINE Status advance_slot(const IndexView& ix, int level,
                                            const int64_t* states_row, int64_t width,
                                            int64_t parent, int64_t tok, const float* score,
                                            int64_t b, int64_t r, int64_t* out) {
  *out = -1;
  if (score != nullptr) {
    const float s = *score;
    if (is_nan(s) || is_pos_inf(s)) return make_error(kBadScore, b, r, s);
    if (is_neg_inf(s)) return Status{};
  }
  if (parent < 0 || parent >= width) {
    return make_error(kParentOutOfRange, b, r, static_cast<double>(parent));
  }
  if (tok < 0 || tok >= ix.K[level]) return make_error(kCodeOutOfRange, b, r, static_cast<double>(tok));
  const int64_t state = states_row[parent];
  if (state == -1) return Status{};
  int64_t child = -1;
  const int32_t rc = find_child(ix, level, state, tok, &child);
  if (rc == kStateOutOfRange) return make_error(rc, b, parent, static_cast<double>(state));
  if (rc != kOk) return make_error(rc, b, r, static_cast<double>(state));
  *out = child;
  return Status{};
}

// ---- sparse head logits (the CPU decode path) ---------------------------------
//
// Deep in the trie a beam has a handful of valid children, and the beam step
// reads logits only there, so the head's hidden -> K GEMM shrinks to one dot
// product per valid child. Host only.

// Dot product with 8 independent partial sums, so -O3 vectorises it without
// -ffast-math (the summation order differs from a GEMM's by rounding only).
inline float dot_product(const float* a, const float* b, int64_t n) {
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out[t] = bias[t] + hidden . weight[t] (weight row-major (K_level, H)) for
// each valid child digit t of `state` at `level`; other entries untouched.
// A dead state -1 writes nothing.
inline int32_t child_logits_row(const IndexView& ix, int level, int64_t state,
                                const float* hidden, const float* weight, const float* bias,
                                int64_t H, float* out) {
  if (state == -1) return kOk;
  int64_t cb = 0, ce = 0;
  int32_t rc = child_range(ix, level, state, &cb, &ce);
  if (rc != kOk) return rc;
  for (int64_t c = cb; c < ce; ++c) {
    int64_t t = 0;
    rc = child_token(ix, level, c, &t);
    if (rc != kOk) return rc;
    out[t] = bias[t] + dot_product(hidden, weight + t * H, H);
  }
  return kOk;
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

// states (batch, width) at `level` -> out (batch, width, K_level), zeroed by
// the caller, 1 at each beam's valid children. Errors: row b, col w.
Status valid_mask(const IndexView& ix, int level, const int64_t* states, int64_t batch,
                  int64_t width, uint8_t* out);

// states (batch, width) at `level`, parents/tokens (and optional scores)
// (batch, beam) -> new states (batch, beam) at level + 1 (see advance_slot).
Status advance_states(const IndexView& ix, int level, const int64_t* states, int64_t batch,
                      int64_t width, const int64_t* parents, const int64_t* tokens,
                      const float* scores, int64_t beam, int64_t* out);

// states/rows (batch, width): rows[i] is beam i's row of hidden (n_rows, H),
// -1 allowed for dead beams only. out (batch, width, K_level), pre-filled by
// the caller, gets every live beam's valid-children logits. Errors: row b,
// col w (kStateOutOfRange, kRowOutOfRange).
Status child_logits(const IndexView& ix, int level, const int64_t* states, const int64_t* rows,
                    int64_t batch, int64_t width, const float* hidden, int64_t n_rows, int64_t H,
                    const float* weight, const float* bias, float* out);

}  // namespace sidmlp
