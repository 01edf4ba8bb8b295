// Host loops over the shared per-row lookup functions of lookup.h.
#include "lookup.h"

namespace sidmlp {

Status leaf_items(const IndexView& ix, const int64_t* states, int64_t n, int64_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t rc = leaf_item_of(ix, states[i], out + i);
    if (rc != kOk) return make_error(rc, i, -1, static_cast<double>(states[i]));
  }
  return Status{};
}

Status prefix_states(const IndexView& ix, const int64_t* prefixes, int64_t n, int64_t len,
                     int64_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t col = -1;
    const int32_t rc = prefix_state(ix, prefixes + i * len, len, out + i, &col);
    if (rc != kOk) {
      const double value = col >= 0 ? static_cast<double>(prefixes[i * len + col]) : 0.0;
      return make_error(rc, i, col, value);
    }
  }
  return Status{};
}

Status finalize(const IndexView& ix, const int64_t* states, const float* scores, int64_t batch,
                int64_t width, int64_t top_n, int64_t* out_items, int64_t* out_codes,
                float* out_scores) {
  const int64_t L = ix.num_levels;
  for (int64_t b = 0; b < batch; ++b) {
    Status st = finalize_user(ix, states + b * width, scores + b * width, width, top_n, b,
                              out_items + b * top_n, out_codes + b * top_n * L,
                              out_scores + b * top_n);
    if (!st.ok()) return st;
  }
  return Status{};
}

Status valid_mask(const IndexView& ix, int level, const int64_t* states, int64_t batch,
                  int64_t width, uint8_t* out) {
  const int64_t K = ix.K[level];
  for (int64_t i = 0; i < batch * width; ++i) {
    const int32_t rc = mark_valid_children(ix, level, states[i], out + i * K);
    if (rc != kOk) return make_error(rc, i / width, i % width, static_cast<double>(states[i]));
  }
  return Status{};
}

Status advance_states(const IndexView& ix, int level, const int64_t* states, int64_t batch,
                      int64_t width, const int64_t* parents, const int64_t* tokens,
                      const float* scores, int64_t beam, int64_t* out) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < beam; ++r) {
      const int64_t i = b * beam + r;
      const Status st = advance_slot(ix, level, states + b * width, width, parents[i], tokens[i],
                                     scores ? scores + i : nullptr, b, r, out + i);
      if (!st.ok()) return st;
    }
  }
  return Status{};
}

Status child_logits(const IndexView& ix, int level, const int64_t* states, const int64_t* rows,
                    int64_t batch, int64_t width, const float* hidden, int64_t n_rows, int64_t H,
                    const float* weight, const float* bias, float* out) {
  const int64_t K = ix.K[level];
  for (int64_t i = 0; i < batch * width; ++i) {
    const int64_t state = states[i];
    if (state == -1) continue;
    const int64_t row = rows[i];
    if (row < 0 || row >= n_rows) {
      return make_error(kRowOutOfRange, i / width, i % width, static_cast<double>(row));
    }
    const int32_t rc =
        child_logits_row(ix, level, state, hidden + row * H, weight, bias, H, out + i * K);
    if (rc != kOk) return make_error(rc, i / width, i % width, static_cast<double>(state));
  }
  return Status{};
}

}  // namespace sidmlp
