// Valid-children masks and state transitions (the Triton decode path's index
// ops) against brute force over every catalog prefix.
#include <cmath>
#include <limits>

#include "fixtures.h"
#include "lookup.h"
#include "test_util.h"

using namespace sidmlp;
using namespace sidmlp_test;

namespace {

const float kNegInf = -std::numeric_limits<float>::infinity();

// Random prefixes of length `level`: catalog prefixes, some scrambled digits.
std::vector<int64_t> random_prefixes(const Catalog& cat, int64_t level, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const auto row = cat.row(static_cast<int64_t>(rng() % static_cast<uint64_t>(cat.n)));
    for (int64_t j = 0; j < level; ++j) {
      const bool scramble = rng() % 4 == 0;
      out.push_back(scramble ? static_cast<int64_t>(rng() % static_cast<uint64_t>(cat.K[j]))
                             : row[j]);
    }
  }
  return out;
}

void check_masks(const Catalog& cat, int64_t dense_depth) {
  IndexArrays arrays;
  CHECK(build(cat, &arrays, dense_depth));
  const IndexView ix = view_of(arrays);
  const auto prefixes = all_prefixes(cat);
  const int64_t batch = 3, width = 5, n = batch * width;
  for (int64_t level = 0; level < cat.L; ++level) {
    const auto p = random_prefixes(cat, level, n, 17 + level);
    std::vector<int64_t> states(n);
    CHECK(sidmlp::prefix_states(ix, p.data(), n, level, states.data()).ok());
    states[n - 1] = -1;  // an explicitly dead beam
    const int64_t K = cat.K[level];
    std::vector<uint8_t> mask(n * K, 0);
    CHECK(valid_mask(ix, static_cast<int>(level), states.data(), batch, width, mask.data()).ok());
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t t = 0; t < K; ++t) {
        std::vector<int64_t> child(p.begin() + i * level, p.begin() + (i + 1) * level);
        child.push_back(t);
        const bool want = states[i] >= 0 && prefixes.count(child) > 0;
        CHECK_EQ(mask[i * K + t], want ? 1 : 0);
      }
    }

    // Every (beam, digit) pair as a kept slot: the new state is the node of the
    // extended prefix, -1 where that is no catalog prefix or the beam is dead.
    const int64_t beam = width * K;
    std::vector<int64_t> parents(batch * beam), tokens(batch * beam), out(batch * beam);
    std::vector<float> scores(batch * beam, 0.0f);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r = 0; r < beam; ++r) {
        parents[b * beam + r] = r / K;
        tokens[b * beam + r] = r % K;
      }
    }
    scores[1] = kNegInf;  // dead slot: -1 whatever its parent and token
    CHECK(advance_states(ix, static_cast<int>(level), states.data(), batch, width, parents.data(),
                         tokens.data(), scores.data(), beam, out.data())
              .ok());
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r = 0; r < beam; ++r) {
        const int64_t i = b * width + r / K;
        std::vector<int64_t> child(p.begin() + i * level, p.begin() + (i + 1) * level);
        child.push_back(r % K);
        int64_t want = -1;
        if (states[i] >= 0 && !(b == 0 && r == 1)) {
          int64_t col = -1;
          CHECK(prefix_state(ix, child.data(), level + 1, &want, &col) == kOk);
        }
        CHECK_EQ(out[b * beam + r], want);
        // Consistent with the mask: alive exactly at valid children.
        if (!(b == 0 && r == 1)) CHECK_EQ(out[b * beam + r] >= 0, mask[i * K + r % K] == 1);
      }
    }
    // Without scores nothing is dead by score.
    CHECK(advance_states(ix, static_cast<int>(level), states.data(), batch, width, parents.data(),
                         tokens.data(), nullptr, beam, out.data())
              .ok());
    CHECK_EQ(out[1] >= 0, mask[1] == 1);
  }
}

}  // namespace

TEST_CASE(masks_match_brute_force_dense_and_csr) {
  const Catalog cat = random_catalog(21, 400, {7, 5, 6, 3});
  check_masks(cat, 2);
  check_masks(cat, 0);
  check_masks(cat, 4);
}

TEST_CASE(masks_single_item_and_singleton_codebooks) {
  check_masks(catalog_from({{1, 2, 0}}, {3, 4, 2}), 2);
  check_masks(catalog_from({{0, 0, 0}}, {1, 1, 1}), 2);
}

TEST_CASE(masks_reject_bad_inputs) {
  const Catalog cat = catalog_from({{0, 1}, {0, 2}, {2, 0}}, {3, 3});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  // Level 1 has 2 nodes: state 2 is out of range, -2 too.
  const std::vector<int64_t> states = {0, 2, 1, -2};
  std::vector<uint8_t> mask(4 * 3, 0);
  Status st = valid_mask(ix, 1, states.data(), 2, 2, mask.data());
  CHECK_EQ(st.code, kStateOutOfRange);
  CHECK_EQ(st.row, 0);
  CHECK_EQ(st.col, 1);

  const std::vector<int64_t> ok_states = {0, 1};
  std::vector<int64_t> out(2);
  const std::vector<int64_t> tokens = {1, 0};
  const std::vector<int64_t> bad_parents = {0, 2};
  st = advance_states(ix, 1, ok_states.data(), 1, 2, bad_parents.data(), tokens.data(), nullptr,
                      2, out.data());
  CHECK_EQ(st.code, kParentOutOfRange);
  CHECK_EQ(st.col, 1);
  const std::vector<int64_t> parents = {0, 1};
  const std::vector<int64_t> bad_tokens = {1, 3};
  st = advance_states(ix, 1, ok_states.data(), 1, 2, parents.data(), bad_tokens.data(), nullptr, 2,
                      out.data());
  CHECK_EQ(st.code, kCodeOutOfRange);
  CHECK_EQ(st.col, 1);
  const std::vector<int64_t> bad_states = {0, 7};
  st = advance_states(ix, 1, bad_states.data(), 1, 2, parents.data(), tokens.data(), nullptr, 2,
                      out.data());
  CHECK_EQ(st.code, kStateOutOfRange);
  CHECK_EQ(st.col, 1);  // the parent beam
  const std::vector<float> nan_scores = {0.0f, std::nanf("")};
  st = advance_states(ix, 1, ok_states.data(), 1, 2, parents.data(), tokens.data(),
                      nan_scores.data(), 2, out.data());
  CHECK_EQ(st.code, kBadScore);
  // A dead slot skips the checks: placeholders never fail.
  const std::vector<float> dead = {kNegInf, kNegInf};
  st = advance_states(ix, 1, bad_states.data(), 1, 2, bad_parents.data(), bad_tokens.data(),
                      dead.data(), 2, out.data());
  CHECK(st.ok());
  CHECK_EQ(out[0], -1);
  CHECK_EQ(out[1], -1);
}

TEST_CASE(child_logits_match_dense_dot_products) {
  const Catalog cat = random_catalog(31, 300, {6, 5, 7});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  const int64_t batch = 2, width = 4, n = batch * width, H = 13;  // H % 8 != 0: tail loop
  for (int64_t level = 0; level < cat.L; ++level) {
    const auto p = random_prefixes(cat, level, n, 40 + level);
    std::vector<int64_t> states(n);
    CHECK(sidmlp::prefix_states(ix, p.data(), n, level, states.data()).ok());
    states[1] = -1;
    const int64_t K = cat.K[level];
    std::vector<float> hidden(n * H), weight(K * H), bias(K);
    for (auto& x : hidden) x = normal(rng);
    for (auto& x : weight) x = normal(rng);
    for (auto& x : bias) x = normal(rng);
    // Rows in reverse beam order, so a wrong mapping cannot pass.
    std::vector<int64_t> rows(n);
    for (int64_t i = 0; i < n; ++i) rows[i] = n - 1 - i;
    rows[1] = -1;  // allowed: beam 1 is dead
    std::vector<float> out(n * K, -7.0f);
    CHECK(child_logits(ix, static_cast<int>(level), states.data(), rows.data(), batch, width,
                       hidden.data(), n, H, weight.data(), bias.data(), out.data())
              .ok());
    std::vector<uint8_t> mask(n * K, 0);
    CHECK(valid_mask(ix, static_cast<int>(level), states.data(), batch, width, mask.data()).ok());
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t t = 0; t < K; ++t) {
        if (!mask[i * K + t]) {
          CHECK(out[i * K + t] == -7.0f);  // untouched
          continue;
        }
        double want = bias[t];
        for (int64_t h = 0; h < H; ++h) {
          want += static_cast<double>(hidden[rows[i] * H + h]) * weight[t * H + h];
        }
        CHECK_NEAR(out[i * K + t], want, 1e-4);
      }
    }
    // A live beam without a hidden row is an error naming it.
    rows[2] = n;
    if (states[2] >= 0) {
      const Status st = child_logits(ix, static_cast<int>(level), states.data(), rows.data(), batch,
                                     width, hidden.data(), n, H, weight.data(), bias.data(),
                                     out.data());
      CHECK_EQ(st.code, kRowOutOfRange);
      CHECK_EQ(st.col, 2);
    }
  }
}

TEST_MAIN()
