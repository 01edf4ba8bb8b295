// Leaf -> item lookup and finalize (dedup, order, padding).
#include <cmath>
#include <limits>

#include "fixtures.h"
#include "lookup.h"
#include "test_util.h"

using namespace sidmlp;
using namespace sidmlp_test;

namespace {

const float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

TEST_CASE(leaf_items_round_trip) {
  const Catalog cat = random_catalog(9, 500, {8, 9, 7});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  std::vector<int64_t> states(cat.n);
  CHECK(prefix_states(ix, cat.codes.data(), cat.n, cat.L, states.data()).ok());
  std::vector<int64_t> items(cat.n);
  CHECK(leaf_items(ix, states.data(), cat.n, items.data()).ok());
  for (int64_t i = 0; i < cat.n; ++i) CHECK_EQ(items[i], cat.items[i]);
  const int64_t dead = -1;
  int64_t item = 0;
  CHECK(leaf_items(ix, &dead, 1, &item).ok());
  CHECK_EQ(item, -1);
  const int64_t bad[] = {0, cat.n};
  const Status st = leaf_items(ix, bad, 2, items.data());
  CHECK_EQ(st.code, kStateOutOfRange);
  CHECK_EQ(st.row, 1);
}

TEST_CASE(finalize_orders_dedups_and_pads) {
  const Catalog cat = catalog_from({{0, 1}, {0, 2}, {2, 0}, {1, 1}}, {3, 3});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  // Leaves in code order: 01 -> item 10, 02 -> 11, 11 -> 13, 20 -> 12.
  // User 0: unsorted with a repeat and a dead entry. User 1: all dead.
  const std::vector<int64_t> states = {1, 3, 1, -1, 0, /*user 1*/ -1, -1, 2, -1, -1};
  const std::vector<float> scores = {-2.0f, -1.0f, -2.0f, 0.0f, -3.0f,
                                     kNegInf, 0.0f, kNegInf, kNegInf, kNegInf};
  const int64_t top_n = 4;
  std::vector<int64_t> items(2 * top_n), codes(2 * top_n * 2);
  std::vector<float> out_scores(2 * top_n);
  CHECK(finalize(ix, states.data(), scores.data(), 2, 5, top_n, items.data(), codes.data(),
                 out_scores.data())
            .ok());
  const int64_t want_items[] = {12, 11, 10, -1, -1, -1, -1, -1};
  const float want_scores[] = {-1.0f, -2.0f, -3.0f, kNegInf};
  for (int i = 0; i < 8; ++i) CHECK_EQ(items[i], want_items[i]);
  for (int i = 0; i < 4; ++i) CHECK(out_scores[i] == want_scores[i]);
  CHECK_EQ(codes[0], 2);
  CHECK_EQ(codes[1], 0);
  CHECK_EQ(codes[2], 0);
  CHECK_EQ(codes[3], 2);
  CHECK_EQ(codes[6], -1);
  for (int i = 8; i < 16; ++i) CHECK_EQ(codes[i], -1);
}

TEST_CASE(finalize_equal_scores_keep_position_order) {
  const Catalog cat = catalog_from({{0, 1}, {0, 2}, {2, 0}}, {3, 3});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  const std::vector<int64_t> states = {2, 0, 1};
  const std::vector<float> scores = {-1.0f, -1.0f, -1.0f};
  std::vector<int64_t> items(3), codes(6);
  std::vector<float> out(3);
  CHECK(finalize(ix, states.data(), scores.data(), 1, 3, 3, items.data(), codes.data(), out.data())
            .ok());
  CHECK_EQ(items[0], 12);
  CHECK_EQ(items[1], 10);
  CHECK_EQ(items[2], 11);
}

TEST_CASE(finalize_rejects_bad_inputs) {
  const Catalog cat = catalog_from({{0, 1}, {0, 2}}, {3, 3});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  std::vector<int64_t> items(2), codes(4);
  std::vector<float> out(2);
  const std::vector<int64_t> states = {0, 5};
  const std::vector<float> scores = {0.0f, 0.0f};
  Status st = finalize(ix, states.data(), scores.data(), 1, 2, 2, items.data(), codes.data(),
                       out.data());
  CHECK_EQ(st.code, kStateOutOfRange);
  CHECK_EQ(st.col, 1);
  const std::vector<int64_t> ok_states = {0, 1};
  const std::vector<float> nan_scores = {0.0f, std::nanf("")};
  st = finalize(ix, ok_states.data(), nan_scores.data(), 1, 2, 2, items.data(), codes.data(),
                out.data());
  CHECK_EQ(st.code, kBadScore);
}

TEST_MAIN()
