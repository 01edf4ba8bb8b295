// Host-side construction and validation of the constrained index (see index.h).
#include "index.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <sstream>

namespace sidmlp {

namespace {

std::string format_code(const int64_t* row, int64_t num_levels) {
  std::ostringstream os;
  os << "[";
  for (int64_t l = 0; l < num_levels; ++l) os << (l ? ", " : "") << row[l];
  os << "]";
  return os.str();
}

bool fail(std::string* error, const std::string& message) {
  if (error) *error = message;
  return false;
}

}  // namespace

bool build_index(const int64_t* codes, const int64_t* item_ids, int64_t n, int64_t num_levels,
                 const int64_t* codebook_sizes, int64_t dense_depth, int64_t dense_limit,
                 IndexArrays* out, std::string* error) {
  if (n < 1) return fail(error, "codes must describe at least one item, got 0 rows");
  if (num_levels < 1 || num_levels > kMaxLevels) {
    std::ostringstream os;
    os << "codes must have between 1 and " << kMaxLevels << " digits, got " << num_levels;
    return fail(error, os.str());
  }
  if (dense_depth < 0) return fail(error, "dense_depth must be >= 0");
  if (dense_limit < 0) return fail(error, "dense_limit must be >= 0");
  const int64_t L = num_levels;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t k = codebook_sizes[l];
    if (k < 1 || k > std::numeric_limits<int32_t>::max()) {
      std::ostringstream os;
      os << "codebook_sizes[" << l << "] must be in [1, 2^31), got " << k;
      return fail(error, os.str());
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    if (item_ids[i] < 0) {
      std::ostringstream os;
      os << "item_ids must be non-negative, got " << item_ids[i] << " at row " << i;
      return fail(error, os.str());
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t c = codes[i * L + l];
      if (c < 0 || c >= codebook_sizes[l]) {
        std::ostringstream os;
        os << "codes[" << i << ", " << l << "] = " << c << " is outside the codebook [0, "
           << codebook_sizes[l] << ")";
        return fail(error, os.str());
      }
    }
  }

  // Lexicographic order of the codes: packed mixed-radix keys when they fit
  // in 63 bits (one integer compare), else a row-wise comparison.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  bool packable = true;
  {
    unsigned __int128 radix = 1;
    for (int64_t l = 0; l < L; ++l) {
      radix *= static_cast<unsigned __int128>(codebook_sizes[l]);
      if (radix >= (static_cast<unsigned __int128>(1) << 63)) packable = false;
    }
  }
  if (packable) {
    std::vector<std::pair<int64_t, int64_t>> keyed(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      int64_t key = 0;
      for (int64_t l = 0; l < L; ++l) key = key * codebook_sizes[l] + codes[i * L + l];
      keyed[i] = {key, i};
    }
    std::sort(keyed.begin(), keyed.end());
    for (int64_t i = 0; i < n; ++i) order[i] = keyed[i].second;
  } else {
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return std::lexicographical_compare(codes + a * L, codes + (a + 1) * L, codes + b * L,
                                          codes + (b + 1) * L);
    });
  }

  // first_diff[i]: first digit where sorted row i differs from row i-1 (0 for
  // the first row). A new level-l node starts exactly where first_diff < l.
  std::vector<int32_t> first_diff(static_cast<size_t>(n), 0);
  std::vector<int64_t> count(static_cast<size_t>(L + 1), 0);
  count[0] = 1;
  for (int64_t i = 0; i < n; ++i) {
    int64_t d = 0;
    if (i > 0) {
      const int64_t* a = codes + order[i - 1] * L;
      const int64_t* b = codes + order[i] * L;
      while (d < L && a[d] == b[d]) ++d;
      if (d == L) {
        std::ostringstream os;
        os << "codes must be unique per item: items " << item_ids[order[i - 1]] << " and "
           << item_ids[order[i]] << " share code " << format_code(b, L);
        return fail(error, os.str());
      }
    }
    first_diff[i] = static_cast<int32_t>(d);
    for (int64_t l = d + 1; l <= L; ++l) ++count[l];
  }

  std::vector<int64_t> base(static_cast<size_t>(L + 2), 0);
  for (int64_t l = 0; l <= L; ++l) base[l + 1] = base[l] + count[l];
  const int64_t total = base[L + 1];
  if (total >= std::numeric_limits<int32_t>::max()) {
    return fail(error, "catalog too large: the index needs more than 2^31 - 1 nodes");
  }

  IndexArrays arrays;
  arrays.token.assign(static_cast<size_t>(total), -1);
  arrays.parent.assign(static_cast<size_t>(total), -1);
  arrays.child_ptr.assign(static_cast<size_t>(base[L] + 1), -1);
  arrays.leaf_item.assign(static_cast<size_t>(count[L]), -1);
  std::vector<int64_t> next(base.begin(), base.end() - 1);  // next free global id per level
  std::vector<int64_t> cur(static_cast<size_t>(L + 1), 0);  // current node per level
  next[0] = 1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* row = codes + order[i] * L;
    for (int64_t l = first_diff[i] + 1; l <= L; ++l) {
      const int64_t g = next[l]++;
      const int64_t p = cur[l - 1];
      arrays.token[g] = static_cast<int32_t>(row[l - 1]);
      arrays.parent[g] = static_cast<int32_t>(p);
      if (arrays.child_ptr[p] < 0) arrays.child_ptr[p] = static_cast<int32_t>(g);
      cur[l] = g;
    }
    arrays.leaf_item[cur[L] - base[L]] = item_ids[order[i]];
  }
  arrays.child_ptr[base[L]] = static_cast<int32_t>(total);

  std::vector<int64_t> dense_off(static_cast<size_t>(L), -1);
  for (int64_t l = 0; l < std::min(dense_depth, L); ++l) {
    const int64_t nodes = count[l];
    const int64_t k = codebook_sizes[l];
    if (nodes > dense_limit / k) continue;  // n_l * K_l > dense_limit
    const int64_t off = static_cast<int64_t>(arrays.dense.size());
    dense_off[l] = off;
    arrays.dense.resize(static_cast<size_t>(off + nodes * k), -1);
    for (int64_t s = 0; s < nodes; ++s) {
      const int64_t g = base[l] + s;
      for (int64_t c = arrays.child_ptr[g]; c < arrays.child_ptr[g + 1]; ++c) {
        arrays.dense[off + s * k + arrays.token[c]] = static_cast<int32_t>(c - base[l + 1]);
      }
    }
  }

  arrays.meta.clear();
  arrays.meta.push_back(kIndexFormat);
  arrays.meta.push_back(L);
  for (int64_t l = 0; l < L; ++l) arrays.meta.push_back(codebook_sizes[l]);
  for (int64_t l = 0; l < L + 2; ++l) arrays.meta.push_back(base[l]);
  for (int64_t l = 0; l < L; ++l) arrays.meta.push_back(dense_off[l]);
  arrays.meta.push_back(static_cast<int64_t>(arrays.dense.size()));
  *out = std::move(arrays);
  return true;
}

bool view_from_meta(const int64_t* meta, int64_t meta_len, int64_t n_child_ptr, int64_t n_token,
                    int64_t n_parent, int64_t n_dense, int64_t n_leaf, IndexView* out,
                    std::string* error) {
  if (meta_len < 5) return fail(error, "index meta is too short");
  if (meta[0] != kIndexFormat) {
    std::ostringstream os;
    os << "index meta has format " << meta[0] << ", this build reads " << kIndexFormat;
    return fail(error, os.str());
  }
  const int64_t L = meta[1];
  if (L < 1 || L > kMaxLevels) return fail(error, "index meta has an invalid number of levels");
  if (meta_len != meta_length(L)) return fail(error, "index meta length does not match its levels");
  IndexView ix;
  ix.num_levels = static_cast<int32_t>(L);
  const int64_t* K = meta + 2;
  const int64_t* base = K + L;
  const int64_t* dense_off = base + L + 2;
  for (int64_t l = 0; l < L; ++l) {
    if (K[l] < 1 || K[l] > std::numeric_limits<int32_t>::max()) {
      return fail(error, "index meta has an invalid codebook size");
    }
    ix.K[l] = K[l];
  }
  if (base[0] != 0 || base[1] != 1) return fail(error, "index meta has an invalid root");
  for (int64_t l = 0; l <= L; ++l) {
    if (base[l + 1] <= base[l] || base[l + 1] >= std::numeric_limits<int32_t>::max()) {
      return fail(error, "index meta has invalid level offsets");
    }
  }
  for (int64_t l = 0; l < L + 2; ++l) ix.base[l] = base[l];
  if (meta[meta_len - 1] != n_dense) return fail(error, "index dense table has the wrong size");
  ix.n_dense = n_dense;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t off = dense_off[l];
    if (off != -1) {
      const int64_t size = ix.num_nodes(static_cast<int>(l)) * K[l];
      if (off < 0 || off > n_dense || size > n_dense - off) {
        return fail(error, "index meta has an invalid dense table offset");
      }
    }
    ix.dense_off[l] = off;
  }
  if (n_child_ptr != base[L] + 1) return fail(error, "index child_ptr has the wrong size");
  if (n_token != base[L + 1]) return fail(error, "index token array has the wrong size");
  if (n_parent != base[L + 1]) return fail(error, "index parent array has the wrong size");
  if (n_leaf != base[L + 1] - base[L]) return fail(error, "index leaf_item has the wrong size");
  *out = ix;
  return true;
}

bool validate_index(const IndexView& ix, std::string* error) {
  const int L = ix.num_levels;
  if (ix.token[0] != -1 || ix.parent[0] != -1) return fail(error, "index root is corrupt");
  // Each level's children chain must start at the next level's first node
  // and (checked by the next level, or the sentinel) end at its last.
  for (int l = 0; l <= L; ++l) {
    if (ix.child_ptr[ix.base[l]] != ix.base[l + 1]) {
      return fail(error, "index child_ptr does not cover every node");
    }
  }
  for (int l = 0; l < L; ++l) {
    for (int64_t s = 0; s < ix.num_nodes(l); ++s) {
      int64_t b = 0, e = 0;
      if (child_range(ix, l, s, &b, &e) != kOk || b == e) {
        return fail(error, "index child_ptr is corrupt (empty or out-of-level child range)");
      }
      const int64_t g = ix.base[l] + s;
      for (int64_t c = b; c < e; ++c) {
        if (ix.parent[c] != g) return fail(error, "index parent array disagrees with child_ptr");
        if (ix.token[c] < 0 || ix.token[c] >= ix.K[l]) {
          return fail(error, "index token outside the codebook");
        }
        if (c > b && ix.token[c] <= ix.token[c - 1]) {
          return fail(error, "index children are not sorted by digit");
        }
      }
    }
    if (ix.dense_off[l] >= 0) {
      for (int64_t s = 0; s < ix.num_nodes(l); ++s) {
        int64_t b = 0, e = 0;
        child_range(ix, l, s, &b, &e);
        int64_t c = b;
        for (int64_t t = 0; t < ix.K[l]; ++t) {
          int64_t expect = -1;
          if (c < e && ix.token[c] == t) expect = (c++) - ix.base[l + 1];
          if (ix.dense[ix.dense_off[l] + s * ix.K[l] + t] != expect) {
            return fail(error, "index dense table disagrees with the CSR children");
          }
        }
      }
    }
  }
  const int64_t n_leaf = ix.num_nodes(L);
  std::vector<int64_t> items(ix.leaf_item, ix.leaf_item + n_leaf);
  std::sort(items.begin(), items.end());
  if (items.front() < 0) return fail(error, "index leaf_item holds a negative item id");
  if (std::adjacent_find(items.begin(), items.end()) != items.end()) {
    return fail(error, "index leaf_item holds duplicate item ids");
  }
  return true;
}

IndexView view_of(const IndexArrays& arrays) {
  IndexView ix;
  std::string error;
  view_from_meta(arrays.meta.data(), static_cast<int64_t>(arrays.meta.size()),
                 static_cast<int64_t>(arrays.child_ptr.size()),
                 static_cast<int64_t>(arrays.token.size()),
                 static_cast<int64_t>(arrays.parent.size()),
                 static_cast<int64_t>(arrays.dense.size()),
                 static_cast<int64_t>(arrays.leaf_item.size()), &ix, &error);
  ix.child_ptr = arrays.child_ptr.data();
  ix.token = arrays.token.data();
  ix.parent = arrays.parent.data();
  ix.dense = arrays.dense.data();
  ix.leaf_item = arrays.leaf_item.data();
  return ix;
}

}  // namespace sidmlp
