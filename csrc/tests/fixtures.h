// Random catalogs and brute-force helpers shared by the csrc unit tests.
#pragma once

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "index.h"

namespace sidmlp_test {

struct Catalog {
  int64_t L = 0;
  std::vector<int64_t> K;
  std::vector<int64_t> codes;  // row-major (n, L), unsorted
  std::vector<int64_t> items;
  int64_t n = 0;

  std::vector<int64_t> row(int64_t i) const {
    return std::vector<int64_t>(codes.begin() + i * L, codes.begin() + (i + 1) * L);
  }
};

// Up to n_raw random distinct codes in shuffled order with distinct item ids.
inline Catalog random_catalog(uint64_t seed, int64_t n_raw, const std::vector<int64_t>& K) {
  std::mt19937_64 rng(seed);
  std::set<std::vector<int64_t>> unique;
  for (int64_t i = 0; i < n_raw; ++i) {
    std::vector<int64_t> c;
    for (int64_t k : K) c.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(k)));
    unique.insert(c);
  }
  std::vector<std::vector<int64_t>> rows(unique.begin(), unique.end());
  std::shuffle(rows.begin(), rows.end(), rng);
  Catalog cat;
  cat.L = static_cast<int64_t>(K.size());
  cat.K = K;
  cat.n = static_cast<int64_t>(rows.size());
  for (int64_t i = 0; i < cat.n; ++i) {
    cat.codes.insert(cat.codes.end(), rows[i].begin(), rows[i].end());
    cat.items.push_back(1000 + 7 * i);
  }
  return cat;
}

inline Catalog catalog_from(const std::vector<std::vector<int64_t>>& rows,
                            const std::vector<int64_t>& K) {
  Catalog cat;
  cat.L = static_cast<int64_t>(K.size());
  cat.K = K;
  cat.n = static_cast<int64_t>(rows.size());
  for (int64_t i = 0; i < cat.n; ++i) {
    cat.codes.insert(cat.codes.end(), rows[i].begin(), rows[i].end());
    cat.items.push_back(10 + i);
  }
  return cat;
}

inline bool build(const Catalog& cat, sidmlp::IndexArrays* arrays, int64_t dense_depth = 2,
                  int64_t dense_limit = 1 << 22) {
  std::string error;
  return sidmlp::build_index(cat.codes.data(), cat.items.data(), cat.n, cat.L, cat.K.data(),
                             dense_depth, dense_limit, arrays, &error);
}

// Every catalog prefix of every length, for brute-force membership tests.
inline std::set<std::vector<int64_t>> all_prefixes(const Catalog& cat) {
  std::set<std::vector<int64_t>> out;
  for (int64_t i = 0; i < cat.n; ++i) {
    auto r = cat.row(i);
    for (int64_t l = 0; l <= cat.L; ++l) out.insert(std::vector<int64_t>(r.begin(), r.begin() + l));
  }
  return out;
}

}  // namespace sidmlp_test
