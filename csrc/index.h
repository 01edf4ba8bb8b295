// Constrained index: a STATIC-style hybrid trie over a catalog's Semantic IDs.
//
// Layout (all arrays flat, so they move to a GPU as a handful of tensors):
//   Nodes of every level are numbered globally in lexicographic code order;
//   level l owns global ids [base[l], base[l+1]), the root is node 0. A beam's
//   state at level l is its *local* node id (global - base[l]); -1 is dead.
//   child_ptr[g] .. child_ptr[g+1]  global ids of node g's children (CSR; the
//                                   children of consecutive nodes are
//                                   consecutive, so one array serves all levels)
//   token[g]                        the digit that leads into node g (root: -1)
//   parent[g]                       global id of g's parent (root: -1)
//   leaf_item[i]                    item id of local leaf i (level L)
//   dense[dense_off[l] + s*K_l + t] local child id of (state s, digit t) at
//                                   shallow levels, or -1 (dense_off[l] = -1
//                                   where the level has no dense table)
// Memory is O(items * L) for the CSR part; dense tables exist only while
// n_l * K_l <= dense_limit entries, so they never grow like K^3.
//
// meta (int64, length 3L + 5):
//   [format, L, K_0..K_{L-1}, base_0..base_{L+1}, dense_off_0..dense_off_{L-1}, n_dense]
#pragma once

#include <string>
#include <vector>

#include "common.h"

namespace sidmlp {

struct IndexView {
  int32_t num_levels = 0;
  int64_t K[kMaxLevels] = {};
  int64_t base[kMaxLevels + 2] = {};
  int64_t dense_off[kMaxLevels] = {};
  int64_t n_dense = 0;
  const int32_t* child_ptr = nullptr;  // base[L] + 1 entries
  const int32_t* token = nullptr;      // base[L + 1] entries
  const int32_t* parent = nullptr;     // base[L + 1] entries
  const int32_t* dense = nullptr;      // n_dense entries
  const int64_t* leaf_item = nullptr;  // base[L + 1] - base[L] entries

  SIDMLP_HD int64_t num_nodes(int level) const { return base[level + 1] - base[level]; }
  SIDMLP_HD int64_t total_nodes() const { return base[num_levels + 1]; }
};

SIDMLP_HD SIDMLP_INLINE int64_t meta_length(int64_t num_levels) { return 3 * num_levels + 5; }

// Global ids [*begin, *end) of the children of local node `state` at `level`
// (0 <= level < L). Checks the state and the CSR entries it reads, so a
// corrupt index yields kCorruptIndex instead of an out-of-bounds read.
SIDMLP_HD SIDMLP_INLINE int32_t child_range(const IndexView& ix, int level, int64_t state,
                                            int64_t* begin, int64_t* end) {
  if (state < 0 || state >= ix.num_nodes(level)) return kStateOutOfRange;
  const int64_t g = ix.base[level] + state;
  const int64_t b = ix.child_ptr[g];
  const int64_t e = ix.child_ptr[g + 1];
  if (b < ix.base[level + 1] || e > ix.base[level + 2] || b > e) return kCorruptIndex;
  *begin = b;
  *end = e;
  return kOk;
}

// Digit of global node g at `level` + 1, checked against the codebook.
SIDMLP_HD SIDMLP_INLINE int32_t child_token(const IndexView& ix, int level, int64_t g,
                                            int64_t* tok) {
  const int64_t t = ix.token[g];
  if (t < 0 || t >= ix.K[level]) return kCorruptIndex;
  *tok = t;
  return kOk;
}

// Local id (at level + 1) of the child of `state` reached by digit `tok`, or
// -1 when that prefix is not in the catalog. O(1) through the dense table at
// shallow levels, O(log children) by binary search in the CSR list below.
SIDMLP_HD SIDMLP_INLINE int32_t find_child(const IndexView& ix, int level, int64_t state,
                                           int64_t tok, int64_t* child) {
  if (tok < 0 || tok >= ix.K[level]) return kCodeOutOfRange;
  if (state < 0 || state >= ix.num_nodes(level)) return kStateOutOfRange;
  const int64_t off = ix.dense_off[level];
  if (off >= 0) {
    const int64_t v = ix.dense[off + state * ix.K[level] + tok];
    if (v < -1 || v >= ix.num_nodes(level + 1)) return kCorruptIndex;
    *child = v;
    return kOk;
  }
  int64_t begin = 0, end = 0;
  const int32_t rc = child_range(ix, level, state, &begin, &end);
  if (rc != kOk) return rc;
  // Children are sorted by digit: lower_bound.
  int64_t lo = begin, hi = end;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (ix.token[mid] < tok) lo = mid + 1; else hi = mid;
  }
  *child = (lo < end && ix.token[lo] == tok) ? lo - ix.base[level + 1] : -1;
  return kOk;
}

// Walk `len` digits from the root: local node id at level `len`, -1 if the
// prefix names no catalog prefix. Digits outside the codebook are errors.
SIDMLP_HD SIDMLP_INLINE int32_t prefix_state(const IndexView& ix, const int64_t* digits,
                                             int64_t len, int64_t* state, int64_t* bad_col) {
  int64_t s = 0;
  for (int64_t l = 0; l < len; ++l) {
    const int64_t t = digits[l];
    if (t < 0 || t >= ix.K[l]) {
      *bad_col = l;
      return kCodeOutOfRange;
    }
    if (s < 0) continue;  // keep checking the remaining digits' range
    int64_t next = -1;
    const int32_t rc = find_child(ix, static_cast<int>(l), s, t, &next);
    if (rc != kOk) {
      *bad_col = l;
      return rc;
    }
    s = next;
  }
  *state = s;
  return kOk;
}

// Digits of local node `state` at `level` (walking parent pointers up),
// written to out[0..level). Checks every pointer it follows.
SIDMLP_HD SIDMLP_INLINE int32_t state_digits(const IndexView& ix, int level, int64_t state,
                                             int64_t* out) {
  if (state < 0 || state >= ix.num_nodes(level)) return kStateOutOfRange;
  int64_t g = ix.base[level] + state;
  for (int l = level; l > 0; --l) {
    const int64_t t = ix.token[g];
    const int64_t p = ix.parent[g];
    if (t < 0 || t >= ix.K[l - 1] || p < ix.base[l - 1] || p >= ix.base[l]) return kCorruptIndex;
    out[l - 1] = t;
    g = p;
  }
  return kOk;
}

// ---- host-only API -------------------------------------------------------

struct IndexArrays {
  std::vector<int64_t> meta;
  std::vector<int32_t> child_ptr;
  std::vector<int32_t> token;
  std::vector<int32_t> parent;
  std::vector<int32_t> dense;
  std::vector<int64_t> leaf_item;
};

// Builds the index from row-major codes (n, L) and item ids (n). Dense tables
// are made for levels l < dense_depth whose n_l * K_l <= dense_limit. Returns
// false with a message naming the argument on bad input (duplicate codes,
// digits outside the codebook, negative item ids, too many nodes).
bool build_index(const int64_t* codes, const int64_t* item_ids, int64_t n, int64_t num_levels,
                 const int64_t* codebook_sizes, int64_t dense_depth, int64_t dense_limit,
                 IndexArrays* out, std::string* error);

// Reads meta and the array sizes into a view (pointers left null), checking
// that they agree. O(L); run on every op call.
bool view_from_meta(const int64_t* meta, int64_t meta_len, int64_t n_child_ptr, int64_t n_token,
                    int64_t n_parent, int64_t n_dense, int64_t n_leaf, IndexView* out,
                    std::string* error);

// Full O(nodes) check of the array contents (sorted children, parent/child
// consistency, dense tables agreeing with the CSR lists, item ids >= 0).
bool validate_index(const IndexView& ix, std::string* error);

IndexView view_of(const IndexArrays& arrays);

}  // namespace sidmlp
