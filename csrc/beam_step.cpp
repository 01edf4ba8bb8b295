// CPU constrained beam step: iterates only over each beam's valid children
// (a handful after the first digits) and keeps the best `beam` in a bounded
// heap, so the cost is O(W * children * log beam) per user, independent of
// the catalog size and of K beyond the first levels.
#include "beam_step.h"

#include <algorithm>
#include <sstream>

namespace sidmlp {

namespace {

bool fail(std::string* error, const std::string& message) {
  if (error) *error = message;
  return false;
}

// Heap order: a "less than" b when a ranks before b, so the heap's front is
// the worst kept candidate and sort_heap yields best-first.
struct RanksBefore {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return ranks_before(a.score, a.flat, b.score, b.flat);
  }
};

}  // namespace

bool check_beam_step_args(const IndexView& ix, const BeamStepArgs& args, std::string* error) {
  if (args.level < 0 || args.level >= ix.num_levels) {
    std::ostringstream os;
    os << "level must be in [0, " << ix.num_levels << "), got " << args.level;
    return fail(error, os.str());
  }
  if (args.K != ix.K[args.level]) {
    std::ostringstream os;
    os << "logits must have K = " << ix.K[args.level] << " (codebook size of level "
       << args.level << ") in the last dim, got " << args.K;
    return fail(error, os.str());
  }
  if (args.beam < 1) return fail(error, "beam_size must be >= 1");
  if (args.batch < 0 || args.width < 0) return fail(error, "batch and width must be >= 0");
  if (args.width > 0 && args.K > (static_cast<int64_t>(0xFFFFFFFFll) - 1) / args.width) {
    return fail(error, "width * K must be < 2^32 (flat candidate indices are 32-bit)");
  }
  return true;
}

Status beam_step_user(const IndexView& ix, const BeamStepArgs& args, int64_t b,
                      BeamStepScratch* scratch) {
  const int level = args.level;
  const int64_t W = args.width;
  const int64_t K = args.K;
  const int64_t beam = args.beam;
  std::vector<Candidate>& heap = scratch->heap;
  heap.clear();
  const RanksBefore before;

  for (int64_t w = 0; w < W; ++w) {
    const int64_t state = args.states[b * W + w];
    const float bs = args.beam_scores[b * W + w];
    bool alive = false;
    Status st = check_beam(ix, level, state, bs, b, w, &alive);
    if (!st.ok()) return st;
    if (!alive) continue;
    int64_t cb = 0, ce = 0;
    const int32_t rc = child_range(ix, level, state, &cb, &ce);
    if (rc != kOk) return make_error(rc, b, w, static_cast<double>(state));
    const int64_t row = (b * W + w) * K;

    // Pass 1: max over the valid children (checking digits and logits).
    float m = neg_inf();
    for (int64_t c = cb; c < ce; ++c) {
      int64_t t = 0;
      if (child_token(ix, level, c, &t) != kOk) return make_error(kCorruptIndex, b, w, 0.0);
      const float x = load_logit(args.logits, row + t, args.logit_type);
      if (is_nan(x) || is_pos_inf(x)) return make_error(kBadLogit, b, w * K + t, x);
      m = std::max(m, x);
    }
    if (is_neg_inf(m)) continue;  // every child has logit -inf: no finite candidate

    // Every candidate of this beam has a larger flat index than all kept so
    // far, so it can only enter with a strictly better score. logit - lse <= 0
    // exactly in float (lse = max + log(sum), sum >= 1), so no candidate beats
    // the beam score: skip the exps when that cannot enter. (Pass 1 still ran,
    // so bad logits are reported whatever the pruning.)
    const bool full = static_cast<int64_t>(heap.size()) == beam;
    if (full && !(bs > heap.front().score)) continue;

    // Pass 2: log-sum-exp over the valid children only.
    float sum = 0.0f;
    for (int64_t c = cb; c < ce; ++c) {
      sum += exp_shifted(load_logit(args.logits, row + ix.token[c], args.logit_type), m);
    }
    const float lse = log_sum_exp_finish(m, sum);

    if (full && !(candidate_score(bs, m, lse) > heap.front().score)) continue;

    // Pass 3: candidates into the bounded heap.
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t t = ix.token[c];
      const float s =
          candidate_score(bs, load_logit(args.logits, row + t, args.logit_type), lse);
      if (is_neg_inf(s)) continue;  // ranks with the dead, filled below
      const Candidate cand{s, static_cast<uint32_t>(w * K + t),
                           static_cast<int32_t>(c - ix.base[level + 1])};
      if (static_cast<int64_t>(heap.size()) < beam) {
        heap.push_back(cand);
        std::push_heap(heap.begin(), heap.end(), before);
      } else if (before(cand, heap.front())) {
        std::pop_heap(heap.begin(), heap.end(), before);
        heap.back() = cand;
        std::push_heap(heap.begin(), heap.end(), before);
      }
    }
  }

  std::sort_heap(heap.begin(), heap.end(), before);
  const int64_t found = static_cast<int64_t>(heap.size());
  float* out_scores = args.out_scores + b * beam;
  int64_t* out_parents = args.out_parents + b * beam;
  int64_t* out_tokens = args.out_tokens + b * beam;
  int64_t* out_states = args.out_states + b * beam;
  for (int64_t r = 0; r < found; ++r) {
    out_scores[r] = heap[r].score;
    out_parents[r] = heap[r].flat / K;
    out_tokens[r] = heap[r].flat % K;
    out_states[r] = heap[r].child;
  }
  if (found == beam) return Status{};

  // Fewer finite candidates than beams: the heap holds all of them, and the
  // reference's stable sort continues with the remaining flat indices in
  // ascending order (every one of them scores -inf).
  std::vector<uint32_t>& taken = scratch->flats;
  taken.clear();
  for (int64_t r = 0; r < found; ++r) taken.push_back(heap[r].flat);
  std::sort(taken.begin(), taken.end());
  int64_t r = found;
  size_t next_taken = 0;
  const int64_t total = W * K;
  for (int64_t f = 0; f < total && r < beam; ++f) {
    if (next_taken < taken.size() && taken[next_taken] == f) {
      ++next_taken;
      continue;
    }
    out_scores[r] = neg_inf();
    out_parents[r] = f / K;
    out_tokens[r] = f % K;
    out_states[r] = -1;
    ++r;
  }
  for (; r < beam; ++r) {  // width * K < beam: the reference pads with zeros
    out_scores[r] = neg_inf();
    out_parents[r] = 0;
    out_tokens[r] = 0;
    out_states[r] = -1;
  }
  return Status{};
}

Status beam_step(const IndexView& ix, const BeamStepArgs& args) {
  BeamStepScratch scratch;
  for (int64_t b = 0; b < args.batch; ++b) {
    Status st = beam_step_user(ix, args, b, &scratch);
    if (!st.ok()) return st;
  }
  return Status{};
}

}  // namespace sidmlp
