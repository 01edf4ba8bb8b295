// Index build, lookup and validation against brute force.
#include <limits>

#include "fixtures.h"
#include "index.h"
#include "lookup.h"
#include "test_util.h"

using namespace sidmlp;
using namespace sidmlp_test;

namespace {

Catalog small() {
  return catalog_from({{3, 0, 2}, {0, 1, 0}, {0, 2, 0}, {0, 1, 1}, {3, 0, 0}}, {4, 3, 3});
}

std::string build_error(const Catalog& cat, int64_t dense_depth = 2) {
  IndexArrays arrays;
  std::string error;
  const bool ok = build_index(cat.codes.data(), cat.items.data(), cat.n, cat.L, cat.K.data(),
                              dense_depth, 1 << 20, &arrays, &error);
  return ok ? std::string() : error;
}

}  // namespace

TEST_CASE(small_catalog_layout) {
  const Catalog cat = small();
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  CHECK_EQ(ix.num_levels, 3);
  // root, {0, 3}, {01, 02, 30}, 5 leaves
  CHECK_EQ(ix.base[0], 0);
  CHECK_EQ(ix.base[1], 1);
  CHECK_EQ(ix.base[2], 3);
  CHECK_EQ(ix.base[3], 6);
  CHECK_EQ(ix.base[4], 11);
  CHECK_EQ(ix.token[1], 0);
  CHECK_EQ(ix.token[2], 3);
  std::string error;
  CHECK(validate_index(ix, &error));
  // Leaves in code order: 010, 011, 020, 300, 302 -> items of rows 1, 3, 2, 4, 0.
  const int64_t expect[] = {11, 13, 12, 14, 10};
  for (int i = 0; i < 5; ++i) CHECK_EQ(ix.leaf_item[i], expect[i]);
  int64_t digits[3];
  CHECK_EQ(state_digits(ix, 3, 4, digits), kOk);
  CHECK_EQ(digits[0], 3);
  CHECK_EQ(digits[1], 0);
  CHECK_EQ(digits[2], 2);
}

TEST_CASE(find_child_matches_brute_force_all_layouts) {
  const std::vector<std::vector<int64_t>> shapes = {
      {5, 7, 3, 6}, {3, 3}, {7, 2, 5, 3, 4}, {1, 1, 1}, {256, 3}, {2, 300, 2}};
  uint64_t seed = 1;
  for (const auto& K : shapes) {
    for (int64_t n_raw : {1, 9, 200}) {
      const Catalog cat = random_catalog(seed++, n_raw, K);
      const auto prefixes = all_prefixes(cat);
      for (int64_t depth : {0, 1, 2, 16}) {
        for (int64_t limit : {int64_t{0}, int64_t{64}, int64_t{1} << 22}) {
          IndexArrays arrays;
          CHECK(build(cat, &arrays, depth, limit));
          const IndexView ix = view_of(arrays);
          std::string error;
          CHECK(validate_index(ix, &error));
          for (int64_t l = 0; l < cat.L; ++l) {
            if (ix.dense_off[l] >= 0) CHECK(l < depth && ix.num_nodes(l) * K[l] <= limit);
          }
          // Every catalog prefix maps to a state whose digits round-trip.
          for (const auto& p : prefixes) {
            int64_t state = -2, col = -1;
            CHECK_EQ(prefix_state(ix, p.data(), static_cast<int64_t>(p.size()), &state, &col),
                     kOk);
            CHECK(state >= 0);
            std::vector<int64_t> back(p.size());
            CHECK_EQ(state_digits(ix, static_cast<int>(p.size()), state, back.data()), kOk);
            CHECK(back == p);
          }
          // Random in-codebook prefixes: state -1 exactly when not a catalog prefix.
          std::mt19937_64 rng(seed);
          for (int trial = 0; trial < 200; ++trial) {
            const int64_t len = static_cast<int64_t>(rng() % (cat.L + 1));
            std::vector<int64_t> p;
            for (int64_t l = 0; l < len; ++l) p.push_back(static_cast<int64_t>(rng() % K[l]));
            int64_t state = -2, col = -1;
            CHECK_EQ(prefix_state(ix, p.data(), len, &state, &col), kOk);
            CHECK_EQ(state >= 0, prefixes.count(p) == 1);
          }
        }
      }
    }
  }
}

TEST_CASE(prefix_state_rejects_codes_outside_codebook) {
  const Catalog cat = small();
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  int64_t state = 0, col = -1;
  const int64_t bad1[] = {4, 0, 0};
  CHECK_EQ(prefix_state(ix, bad1, 3, &state, &col), kCodeOutOfRange);
  CHECK_EQ(col, 0);
  const int64_t bad2[] = {1, -1, 0};  // first digit not in catalog, second out of range
  CHECK_EQ(prefix_state(ix, bad2, 3, &state, &col), kCodeOutOfRange);
  CHECK_EQ(col, 1);
  std::vector<int64_t> states(2);
  const int64_t rows[] = {0, 1, 1, 9, 9, 9};
  const Status st = prefix_states(ix, rows, 2, 3, states.data());
  CHECK_EQ(st.code, kCodeOutOfRange);
  CHECK_EQ(st.row, 1);
}

TEST_CASE(build_rejects_bad_catalogs) {
  CHECK(build_error(catalog_from({{0, 1}, {0, 1}}, {2, 2})).find("unique") != std::string::npos);
  CHECK(build_error(catalog_from({{0, 2}}, {2, 2})).find("codes[0, 1] = 2") != std::string::npos);
  CHECK(build_error(catalog_from({{0, -1}}, {2, 2})).find("outside the codebook") !=
        std::string::npos);
  Catalog neg = catalog_from({{0, 1}}, {2, 2});
  neg.items[0] = -5;
  CHECK(build_error(neg).find("item_ids") != std::string::npos);
  Catalog empty = catalog_from({}, {2, 2});
  CHECK(build_error(empty).find("at least one item") != std::string::npos);
  CHECK(build_error(catalog_from({{0}}, {0})).find("codebook_sizes[0]") != std::string::npos);
  std::vector<int64_t> deep_k(17, 2);
  CHECK(build_error(catalog_from({std::vector<int64_t>(17, 0)}, deep_k)).find("digits") !=
        std::string::npos);
  CHECK(build_error(small(), -1).find("dense_depth") != std::string::npos);
}

TEST_CASE(unpackable_codebooks_use_row_compare) {
  const int64_t big = std::numeric_limits<int32_t>::max();
  const Catalog cat = catalog_from(
      {{big - 1, 5, 0}, {0, big - 2, 1}, {big - 1, 4, 7}, {0, big - 2, 0}}, {big, big, big});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  std::string error;
  CHECK(validate_index(ix, &error));
  CHECK_EQ(ix.dense_off[0], -1);  // big * 1 > dense_limit
  for (int64_t i = 0; i < cat.n; ++i) {
    const auto r = cat.row(i);
    int64_t state = -1, col = -1, item = -1;
    CHECK_EQ(prefix_state(ix, r.data(), 3, &state, &col), kOk);
    CHECK_EQ(leaf_item_of(ix, state, &item), kOk);
    CHECK_EQ(item, cat.items[i]);
  }
}

TEST_CASE(view_from_meta_checks_sizes) {
  const Catalog cat = small();
  IndexArrays a;
  CHECK(build(cat, &a));
  IndexView ix;
  std::string error;
  const auto m = a.meta;
  const int64_t sizes[] = {static_cast<int64_t>(a.child_ptr.size()),
                           static_cast<int64_t>(a.token.size()),
                           static_cast<int64_t>(a.parent.size()),
                           static_cast<int64_t>(a.dense.size()),
                           static_cast<int64_t>(a.leaf_item.size())};
  CHECK(view_from_meta(m.data(), m.size(), sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], &ix,
                       &error));
  CHECK(!view_from_meta(m.data(), m.size(), sizes[0] - 1, sizes[1], sizes[2], sizes[3], sizes[4],
                        &ix, &error));
  CHECK(!view_from_meta(m.data(), m.size(), sizes[0], sizes[1], sizes[2], sizes[3] + 1, sizes[4],
                        &ix, &error));
  CHECK(!view_from_meta(m.data(), m.size() - 1, sizes[0], sizes[1], sizes[2], sizes[3], sizes[4],
                        &ix, &error));
  auto bad = m;
  bad[0] = 99;
  CHECK(!view_from_meta(bad.data(), bad.size(), sizes[0], sizes[1], sizes[2], sizes[3], sizes[4],
                        &ix, &error));
  CHECK(error.find("format") != std::string::npos);
  bad = m;
  bad[2 + 3 + 1] = 0;  // base[1] != 1
  CHECK(!view_from_meta(bad.data(), bad.size(), sizes[0], sizes[1], sizes[2], sizes[3], sizes[4],
                        &ix, &error));
  bad = m;
  bad[2 + 3 + 5] = sizes[3];  // dense offset of level 0 past the end
  CHECK(!view_from_meta(bad.data(), bad.size(), sizes[0], sizes[1], sizes[2], sizes[3], sizes[4],
                        &ix, &error));
}

TEST_CASE(validate_index_detects_corruption) {
  const Catalog cat = random_catalog(3, 60, {4, 5, 3});
  IndexArrays good;
  CHECK(build(cat, &good));
  std::string error;
  {
    IndexArrays a = good;
    std::swap(a.token[1], a.token[2]);  // level-1 children no longer sorted
    CHECK(!validate_index(view_of(a), &error));
  }
  {
    IndexArrays a = good;
    a.child_ptr[1] = a.child_ptr[2];  // empty range for node 1 (or overlap)
    CHECK(!validate_index(view_of(a), &error));
  }
  {
    IndexArrays a = good;
    a.child_ptr[2] = 1 << 30;  // out of level
    CHECK(!validate_index(view_of(a), &error));
    // The per-call checks refuse the range too (no out-of-bounds read).
    int64_t b = 0, e = 0;
    CHECK_EQ(child_range(view_of(a), 0, 0, &b, &e), kOk);
    CHECK(child_range(view_of(a), 1, 0, &b, &e) != kOk ||
          child_range(view_of(a), 1, 1, &b, &e) != kOk);
  }
  {
    IndexArrays a = good;
    a.dense[0] = a.dense[0] == -1 ? 0 : -1;
    CHECK(!validate_index(view_of(a), &error));
  }
  {
    IndexArrays a = good;
    a.parent[5] = 0;
    CHECK(!validate_index(view_of(a), &error));
  }
  {
    IndexArrays a = good;
    a.leaf_item[1] = a.leaf_item[0];
    CHECK(!validate_index(view_of(a), &error));
  }
}

TEST_MAIN()
