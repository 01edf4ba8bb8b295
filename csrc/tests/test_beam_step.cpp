// Beam step vs a brute-force transcription of decoding.beam_step_reference,
// plus a host emulation of the CUDA radix-select algorithm (beam_step.cu).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "beam_step.h"
#include "fixtures.h"
#include "index.h"
#include "test_util.h"

using namespace sidmlp;
using namespace sidmlp_test;

namespace {

const float kNegInf = -std::numeric_limits<float>::infinity();

struct StepOut {
  std::vector<float> scores;
  std::vector<int64_t> parents, tokens, states;
};

// The Python reference, literally: dense validity mask, masked log-softmax in
// float32, candidates over all W*K flat slots, stable descending sort, pad.
StepOut brute_step(const std::set<std::vector<int64_t>>& catalog_prefixes,
                   const std::vector<std::vector<int64_t>>& prefixes,  // (B*W)
                   const std::vector<float>& logits, const std::vector<float>& beam_scores,
                   int64_t B, int64_t W, int64_t K, int64_t beam) {
  StepOut out;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<std::pair<float, int64_t>> cand;
    for (int64_t w = 0; w < W; ++w) {
      const auto& p = prefixes[b * W + w];
      const float bs = beam_scores[b * W + w];
      std::vector<bool> valid(K, false);
      float m = kNegInf;
      for (int64_t t = 0; t < K; ++t) {
        auto q = p;
        q.push_back(t);
        valid[t] = std::isfinite(bs) && catalog_prefixes.count(q) == 1;
        if (valid[t]) m = std::max(m, logits[(b * W + w) * K + t]);
      }
      float lse = 0.0f;
      if (std::isfinite(m)) {
        float sum = 0.0f;
        for (int64_t t = 0; t < K; ++t) {
          if (valid[t]) sum += std::exp(logits[(b * W + w) * K + t] - m);
        }
        lse = m + std::log(sum);
      }
      for (int64_t t = 0; t < K; ++t) {
        float s = kNegInf;
        if (valid[t]) {
          const float logp = logits[(b * W + w) * K + t] - lse;
          s = bs + logp;
        }
        cand.push_back({s, w * K + t});
      }
    }
    std::stable_sort(cand.begin(), cand.end(),
                     [](const auto& a, const auto& c) { return a.first > c.first; });
    for (int64_t r = 0; r < beam; ++r) {
      if (r < static_cast<int64_t>(cand.size())) {
        out.scores.push_back(cand[r].first);
        out.parents.push_back(cand[r].second / K);
        out.tokens.push_back(cand[r].second % K);
      } else {
        out.scores.push_back(kNegInf);
        out.parents.push_back(0);
        out.tokens.push_back(0);
      }
    }
  }
  return out;
}

StepOut run_step(const IndexView& ix, int level, const std::vector<float>& logits,
                 const std::vector<float>& beam_scores, const std::vector<int64_t>& states,
                 int64_t B, int64_t W, int64_t beam, Status* status) {
  StepOut out;
  out.scores.assign(B * beam, 0.0f);
  out.parents.assign(B * beam, 0);
  out.tokens.assign(B * beam, 0);
  out.states.assign(B * beam, 0);
  BeamStepArgs args;
  args.logits = logits.data();
  args.beam_scores = beam_scores.data();
  args.states = states.data();
  args.batch = B;
  args.width = W;
  args.K = ix.K[level];
  args.level = level;
  args.beam = beam;
  args.out_scores = out.scores.data();
  args.out_parents = out.parents.data();
  args.out_tokens = out.tokens.data();
  args.out_states = out.states.data();
  std::string error;
  CHECK(check_beam_step_args(ix, args, &error));
  *status = beam_step(ix, args);
  return out;
}

// Host emulation of beam_step.cu: key slots per (beam, digit), radix select
// of the beam-th largest key in 8-bit digits, rank by counting, dead fill
// from the zero slots in flat order.
StepOut radix_step(const IndexView& ix, int level, const std::vector<float>& logits,
                   const std::vector<float>& beam_scores, const std::vector<int64_t>& states,
                   int64_t B, int64_t W, int64_t beam) {
  const int64_t K = ix.K[level];
  const int64_t N = W * K;
  StepOut out;
  out.scores.assign(B * beam, 0.0f);
  out.parents.assign(B * beam, 0);
  out.tokens.assign(B * beam, 0);
  out.states.assign(B * beam, 0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<uint64_t> keys(N, 0);
    for (int64_t w = 0; w < W; ++w) {
      bool alive = false;
      const int64_t state = states[b * W + w];
      const float bs = beam_scores[b * W + w];
      if (!check_beam(ix, level, state, bs, b, w, &alive).ok() || !alive) continue;
      int64_t cb = 0, ce = 0;
      child_range(ix, level, state, &cb, &ce);
      float m = kNegInf;
      for (int64_t c = cb; c < ce; ++c) m = std::max(m, logits[(b * W + w) * K + ix.token[c]]);
      if (!std::isfinite(m)) continue;
      float sum = 0.0f;
      for (int64_t c = cb; c < ce; ++c) sum += exp_shifted(logits[(b * W + w) * K + ix.token[c]], m);
      const float lse = log_sum_exp_finish(m, sum);
      for (int64_t c = cb; c < ce; ++c) {
        const int64_t t = ix.token[c];
        const float s = candidate_score(bs, logits[(b * W + w) * K + t], lse);
        if (std::isfinite(s)) keys[w * K + t] = candidate_key(s, static_cast<uint32_t>(w * K + t));
      }
    }
    int64_t found = 0;
    for (uint64_t key : keys) found += key != 0;
    const int64_t k = std::min(found, beam);
    uint64_t threshold = 1;
    if (found > beam) {
      uint64_t prefix = 0, mask = 0, remaining = static_cast<uint64_t>(beam);
      for (int shift = 56; shift >= 0; shift -= 8) {
        uint64_t hist[256] = {};
        for (uint64_t key : keys) {
          if (key != 0 && (key & mask) == prefix) ++hist[(key >> shift) & 0xFF];
        }
        uint64_t cum = 0;
        int digit = 0;
        for (int d = 255; d >= 0; --d) {
          if (cum + hist[d] >= remaining) {
            digit = d;
            break;
          }
          cum += hist[d];
        }
        remaining -= cum;
        prefix |= static_cast<uint64_t>(digit) << shift;
        mask |= static_cast<uint64_t>(0xFF) << shift;
      }
      threshold = prefix;
    }
    std::vector<uint64_t> selected;
    for (uint64_t key : keys) {
      if (key != 0 && key >= threshold) selected.push_back(key);
    }
    CHECK_EQ(static_cast<int64_t>(selected.size()), k);
    for (uint64_t key : selected) {
      int64_t rank = 0;
      for (uint64_t other : selected) rank += other > key;
      const uint32_t flat = key_flat(key);
      int64_t child = -1;
      CHECK_EQ(find_child(ix, level, states[b * W + flat / K], flat % K, &child), kOk);
      out.scores[b * beam + rank] = key_score(key);
      out.parents[b * beam + rank] = flat / K;
      out.tokens[b * beam + rank] = flat % K;
      out.states[b * beam + rank] = child;
    }
    int64_t r = k;
    for (int64_t f = 0; f < N && r < beam; ++f) {
      if (keys[f] != 0) continue;
      out.scores[b * beam + r] = kNegInf;
      out.parents[b * beam + r] = f / K;
      out.tokens[b * beam + r] = f % K;
      out.states[b * beam + r] = -1;
      ++r;
    }
    for (; r < beam; ++r) {
      out.scores[b * beam + r] = kNegInf;
      out.parents[b * beam + r] = 0;
      out.tokens[b * beam + r] = 0;
      out.states[b * beam + r] = -1;
    }
  }
  return out;
}

void check_same(const StepOut& got, const StepOut& want, bool check_states) {
  CHECK_EQ(got.scores.size(), want.scores.size());
  for (size_t i = 0; i < got.scores.size(); ++i) {
    // Same float32 formula in the same order: bit-identical, -inf included.
    CHECK(got.scores[i] == want.scores[i]);
    CHECK_EQ(got.parents[i], want.parents[i]);
    CHECK_EQ(got.tokens[i], want.tokens[i]);
    if (check_states) CHECK_EQ(got.states[i], want.states[i]);
  }
}

enum class LogitStyle { kRandom, kZeros, kSomeNegInf };

// Full multi-level search, each step checked against brute force and the
// radix emulation; states checked against the prefixes they stand for.
void search_parity(uint64_t seed, const std::vector<int64_t>& K, int64_t n_raw, int64_t B,
                   int64_t beam, LogitStyle style) {
  const Catalog cat = random_catalog(seed, n_raw, K);
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  const auto catalog_prefixes = all_prefixes(cat);
  std::mt19937_64 rng(seed * 7919 + 1);
  std::normal_distribution<float> normal(0.0f, 2.0f);

  int64_t W = 1;
  std::vector<std::vector<int64_t>> prefixes(B);  // empty prefixes
  std::vector<float> scores(B, 0.0f);
  std::vector<int64_t> states(B, 0);
  for (int level = 0; level < cat.L; ++level) {
    const int64_t k = K[level];
    std::vector<float> logits(B * W * k);
    for (auto& x : logits) {
      switch (style) {
        case LogitStyle::kRandom: x = normal(rng); break;
        case LogitStyle::kZeros: x = 0.0f; break;
        case LogitStyle::kSomeNegInf: x = (rng() % 4 == 0) ? kNegInf : normal(rng); break;
      }
    }
    const StepOut want = brute_step(catalog_prefixes, prefixes, logits, scores, B, W, k, beam);
    Status st;
    const StepOut got = run_step(ix, level, logits, scores, states, B, W, beam, &st);
    CHECK(st.ok());
    check_same(got, want, false);
    check_same(radix_step(ix, level, logits, scores, states, B, W, beam), got, true);

    std::vector<std::vector<int64_t>> next_prefixes(B * beam);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t r = 0; r < beam; ++r) {
        const int64_t i = b * beam + r;
        auto p = prefixes[b * W + want.parents[i]];
        p.push_back(want.tokens[i]);
        next_prefixes[i] = p;
        if (std::isfinite(got.scores[i])) {
          int64_t expect = -1, col = -1;
          CHECK_EQ(prefix_state(ix, p.data(), level + 1, &expect, &col), kOk);
          CHECK_EQ(got.states[i], expect);
          CHECK(expect >= 0);
        } else {
          CHECK_EQ(got.states[i], -1);
        }
      }
    }
    prefixes = next_prefixes;
    scores = got.scores;
    states = got.states;
    W = beam;
  }
}

}  // namespace

TEST_CASE(search_parity_random_catalogs) {
  const std::vector<std::vector<int64_t>> shapes = {
      {5, 7, 3, 6}, {3, 3}, {7, 2, 5, 3, 4}, {1, 1, 1}, {6, 10, 3}, {2, 2, 2, 2, 2}};
  uint64_t seed = 11;
  for (const auto& K : shapes) {
    for (int64_t n_raw : {1, 4, 40, 300}) {
      for (int64_t beam : {1, 3, 8, 50}) {
        search_parity(seed++, K, n_raw, 3, beam, LogitStyle::kRandom);
      }
    }
  }
}

TEST_CASE(search_parity_ties_and_neg_inf_logits) {
  uint64_t seed = 500;
  for (const auto& K : std::vector<std::vector<int64_t>>{{4, 4, 4}, {3, 5}, {2, 3, 2, 3}}) {
    for (int64_t beam : {1, 2, 5, 16, 40}) {
      search_parity(seed++, K, 30, 2, beam, LogitStyle::kZeros);
      search_parity(seed++, K, 30, 2, beam, LogitStyle::kSomeNegInf);
    }
  }
}

TEST_CASE(dead_beams_and_padding) {
  const Catalog cat = catalog_from({{0, 1}, {0, 2}, {2, 0}}, {3, 3});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  // Level 1, two beams: prefix 0 (state 0) alive, prefix 2 (state 1) dead by score.
  std::vector<float> logits(2 * 3, 0.0f);
  std::vector<float> scores = {-1.0f, kNegInf};
  std::vector<int64_t> states = {0, 1};
  Status st;
  StepOut out = run_step(ix, 1, logits, scores, states, 1, 2, 5, &st);
  CHECK(st.ok());
  const float half = -1.0f + (0.0f - (0.0f + std::log(2.0f)));
  CHECK(out.scores[0] == half && out.scores[1] == half);
  CHECK_EQ(out.tokens[0], 1);
  CHECK_EQ(out.tokens[1], 2);
  // Remaining slots: smallest flat indices not taken (0, 3, 4), score -inf.
  const int64_t want_flat[] = {0, 3, 4};
  for (int r = 2; r < 5; ++r) {
    CHECK(std::isinf(out.scores[r]) && out.scores[r] < 0);
    CHECK_EQ(out.parents[r] * 3 + out.tokens[r], want_flat[r - 2]);
    CHECK_EQ(out.states[r], -1);
  }
  // width * K < beam: padding with (0, 0).
  out = run_step(ix, 1, logits, scores, states, 1, 2, 9, &st);
  CHECK_EQ(out.parents[8], 0);
  CHECK_EQ(out.tokens[8], 0);
  // state -1 with a finite score is dead too.
  states = {-1, 1};
  scores = {0.0f, 0.0f};
  out = run_step(ix, 1, logits, scores, states, 1, 2, 2, &st);
  CHECK(st.ok());
  CHECK_EQ(out.parents[0], 1);
  CHECK_EQ(out.tokens[0], 0);
  CHECK(out.scores[0] == 0.0f);  // single child: log-softmax is exactly 0
  CHECK(std::isinf(out.scores[1]));
  // Empty batch and zero width are fine.
  out = run_step(ix, 1, {}, {}, {}, 0, 2, 3, &st);
  CHECK(st.ok());
  out = run_step(ix, 1, {}, {}, {}, 2, 0, 3, &st);
  CHECK(st.ok());
  CHECK(std::isinf(out.scores[5]));
}

TEST_CASE(bad_inputs_report_errors) {
  const Catalog cat = catalog_from({{0, 1}, {0, 2}, {2, 0}}, {3, 3});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  std::vector<float> logits(2 * 3, 0.0f);
  Status st;
  // NaN at a valid child -> error naming the flat position; at an invalid one -> ignored.
  logits[1] = std::nanf("");
  run_step(ix, 1, logits, {0.0f, 0.0f}, {0, 1}, 1, 2, 2, &st);
  CHECK_EQ(st.code, kBadLogit);
  CHECK_EQ(st.col, 1);
  logits[1] = 0.0f;
  logits[0] = std::nanf("");
  run_step(ix, 1, logits, {0.0f, 0.0f}, {0, 1}, 1, 2, 2, &st);
  CHECK(st.ok());
  logits[0] = 0.0f;
  logits[3] = std::numeric_limits<float>::infinity();
  run_step(ix, 1, logits, {0.0f, 0.0f}, {0, 1}, 1, 2, 2, &st);
  CHECK_EQ(st.code, kBadLogit);
  logits[3] = 0.0f;
  run_step(ix, 1, logits, {0.0f, 0.0f}, {0, 2}, 1, 2, 2, &st);
  CHECK_EQ(st.code, kStateOutOfRange);
  CHECK_EQ(st.col, 1);
  run_step(ix, 1, logits, {0.0f, 0.0f}, {-2, 0}, 1, 2, 2, &st);
  CHECK_EQ(st.code, kStateOutOfRange);
  run_step(ix, 1, logits, {std::nanf(""), 0.0f}, {0, 0}, 1, 2, 2, &st);
  CHECK_EQ(st.code, kBadBeamScore);
  run_step(ix, 1, logits, {std::numeric_limits<float>::infinity(), 0.0f}, {0, 0}, 1, 2, 2, &st);
  CHECK_EQ(st.code, kBadBeamScore);

  BeamStepArgs args;
  std::string error;
  args.level = 2;
  args.K = 3;
  args.beam = 1;
  CHECK(!check_beam_step_args(ix, args, &error));
  CHECK(error.find("level") != std::string::npos);
  args.level = 0;
  args.K = 4;
  CHECK(!check_beam_step_args(ix, args, &error));
  CHECK(error.find("K = 3") != std::string::npos);
  args.K = 3;
  args.beam = 0;
  CHECK(!check_beam_step_args(ix, args, &error));
  args.beam = 1;
  args.width = int64_t{1} << 31;
  CHECK(!check_beam_step_args(ix, args, &error));
}

TEST_CASE(half_precision_logits) {
  CHECK(f16_bits_to_float(0x3C00) == 1.0f);
  CHECK(f16_bits_to_float(0xC000) == -2.0f);
  CHECK(f16_bits_to_float(0x7BFF) == 65504.0f);
  CHECK(f16_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(f16_bits_to_float(0x03FF) == 1023.0f * std::ldexp(1.0f, -24));
  CHECK(std::isinf(f16_bits_to_float(0x7C00)) && f16_bits_to_float(0x7C00) > 0);
  CHECK(std::isinf(f16_bits_to_float(0xFC00)) && f16_bits_to_float(0xFC00) < 0);
  CHECK(std::isnan(f16_bits_to_float(0x7E00)));
  CHECK(std::signbit(f16_bits_to_float(0x8000)));
  CHECK(bf16_bits_to_float(0x3F80) == 1.0f);
  CHECK(bf16_bits_to_float(0xC0A0) == -5.0f);
  // Same step on bf16 logits equals the float step on the widened values.
  const Catalog cat = random_catalog(77, 50, {4, 6, 5});
  IndexArrays arrays;
  CHECK(build(cat, &arrays));
  const IndexView ix = view_of(arrays);
  std::mt19937 rng(3);
  std::vector<uint16_t> raw(2 * 4);
  std::vector<float> wide(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    raw[i] = static_cast<uint16_t>(0x3F00 + rng() % 0x200);  // about 0.5 .. 2
    wide[i] = bf16_bits_to_float(raw[i]);
  }
  std::vector<float> bs = {0.0f, -0.5f};
  std::vector<int64_t> states = {0, 0};
  Status st;
  const StepOut want = run_step(ix, 0, wide, bs, states, 2, 1, 3, &st);
  StepOut got;
  got.scores.resize(6);
  got.parents.resize(6);
  got.tokens.resize(6);
  got.states.resize(6);
  BeamStepArgs args;
  args.logits = raw.data();
  args.logit_type = LogitType::kBFloat16;
  args.beam_scores = bs.data();
  args.states = states.data();
  args.batch = 2;
  args.width = 1;
  args.K = 4;
  args.level = 0;
  args.beam = 3;
  args.out_scores = got.scores.data();
  args.out_parents = got.parents.data();
  args.out_tokens = got.tokens.data();
  args.out_states = got.states.data();
  CHECK(beam_step(ix, args).ok());
  check_same(got, want, true);
}

TEST_CASE(candidate_keys_order_like_ranks_before) {
  std::mt19937_64 rng(5);
  const float specials[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 3.5f, -3.5f, 1e30f, -1e30f, kNegInf};
  std::vector<float> values(std::begin(specials), std::end(specials));
  std::normal_distribution<float> normal(0.0f, 10.0f);
  for (int i = 0; i < 200; ++i) values.push_back(normal(rng));
  for (float a : values) {
    const uint32_t fa = static_cast<uint32_t>(rng() % 1000);
    const uint64_t ka = candidate_key(a, fa);
    CHECK(key_flat(ka) == fa);
    CHECK(key_score(ka) == a);
    CHECK(ka != 0);
    for (float c : values) {
      const uint32_t fc = static_cast<uint32_t>(rng() % 1000);
      if (fa == fc) continue;
      const uint64_t kc = candidate_key(c, fc);
      CHECK_EQ(ka > kc, ranks_before(a, fa, c, fc));
    }
  }
}

TEST_MAIN()
