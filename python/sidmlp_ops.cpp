// Binding layer: torch.library custom ops `sidmlp::...` over the csrc core,
// producing the module sidmlp_kernels._C.
//
// The index travels as plain tensors (see csrc/index.h) plus its int[] meta,
// so the ops need no custom class, move to a GPU with .to(), and trace under
// torch.compile (fake kernels live in sidmlp_kernels/constrained.py):
//   index = [child_ptr int32, token int32, parent int32, dense int32, leaf_item int64]
//
// Bad input raises ValueError / TypeError naming the argument (TORCH_CHECK_VALUE /
// TORCH_CHECK_TYPE); the core reports data errors (states out of range, NaN
// logits, digits outside the codebook) as Status values, never reading out
// of bounds.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "beam_step.h"
#include "index.h"
#include "lookup.h"

#ifdef SIDMLP_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_ops.h"
#endif

namespace {

using at::Tensor;
using sidmlp::IndexView;
using sidmlp::Status;

constexpr int64_t kIndexTensors = 5;

std::string shape_str(const Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// Checks the index tensors against their meta and fills a view of them.
IndexView make_view(const std::vector<Tensor>& index, at::IntArrayRef meta,
                    const c10::Device& device) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(index.size()) == kIndexTensors, "index must hold ",
                    kIndexTensors, " tensors (child_ptr, token, parent, dense, leaf_item), got ",
                    index.size());
  const char* names[kIndexTensors] = {"child_ptr", "token", "parent", "dense", "leaf_item"};
  for (int64_t i = 0; i < kIndexTensors; ++i) {
    const auto want = i == 4 ? at::kLong : at::kInt;
    TORCH_CHECK_TYPE(index[i].scalar_type() == want, "index ", names[i], " must be ",
                     i == 4 ? "int64" : "int32", ", got ", index[i].scalar_type());
    TORCH_CHECK_VALUE(index[i].dim() == 1 && index[i].is_contiguous(), "index ", names[i],
                      " must be a contiguous 1-D tensor");
    TORCH_CHECK_VALUE(index[i].device() == device, "index is on ", index[i].device(),
                      " but the inputs are on ", device, "; move it with index.to(device)");
  }
  IndexView ix;
  std::string error;
  const bool ok = sidmlp::view_from_meta(meta.data(), static_cast<int64_t>(meta.size()),
                                         index[0].numel(), index[1].numel(), index[2].numel(),
                                         index[3].numel(), index[4].numel(), &ix, &error);
  TORCH_CHECK_VALUE(ok, "index does not match its meta: ", error);
  ix.child_ptr = index[0].data_ptr<int32_t>();
  ix.token = index[1].data_ptr<int32_t>();
  ix.parent = index[2].data_ptr<int32_t>();
  ix.dense = index[3].data_ptr<int32_t>();
  ix.leaf_item = index[4].data_ptr<int64_t>();
  return ix;
}

// First error (lowest row) seen by the parallel loops.
class FirstError {
 public:
  void record(const Status& s) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (status_.ok() || s.row < status_.row) status_ = s;
  }
  const Status& get() const { return status_; }

 private:
  std::mutex mutex_;
  Status status_;
};

void check_integer(const Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
}

void raise_beam_step(const Status& s, const IndexView& ix, int64_t level,
                                  int64_t K) {
  switch (s.code) {
    case sidmlp::kStateOutOfRange:
      TORCH_CHECK_VALUE(false, "states[", s.row, ", ", s.col, "] = ",
                        static_cast<int64_t>(s.value), " is not a node of level ", level,
                        " (expected -1 or [0, ", ix.num_nodes(static_cast<int>(level)), "))");
    case sidmlp::kBadLogit:
      TORCH_CHECK_VALUE(false, "non-finite logit: logits[", s.row, ", ", s.col / K, ", ", s.col % K, "] is ",
                        s.value, " at a catalog-valid digit (logits must be finite or -inf)");
    case sidmlp::kBadBeamScore:
      TORCH_CHECK_VALUE(false, "beam_scores[", s.row, ", ", s.col, "] is ", s.value,
                        " (beam scores must be finite or -inf)");
    default:
      TORCH_CHECK_VALUE(false, "beam_step failed: ", sidmlp::error_name(s.code), " at user ",
                        s.row, ", beam ", s.col, " (is the index corrupt?)");
  }
}

void raise_lookup(const Status& s, const char* arg, int64_t level,
                               const IndexView& ix) {
  switch (s.code) {
    case sidmlp::kCodeOutOfRange:
      TORCH_CHECK_VALUE(false, arg, "[", s.row, ", ", s.col, "] = ",
                        static_cast<int64_t>(s.value), " is outside the codebook [0, ",
                        ix.K[s.col], ")");
    case sidmlp::kStateOutOfRange:
      TORCH_CHECK_VALUE(false, arg, " holds ", static_cast<int64_t>(s.value), " at row ", s.row,
                        ", which is not a node of level ", level, " (expected -1 or [0, ",
                        ix.num_nodes(static_cast<int>(level)), "))");
    case sidmlp::kBadScore:
      TORCH_CHECK_VALUE(false, "scores[", s.row, ", ", s.col, "] is ", s.value,
                        " (scores must be finite or -inf)");
    default:
      TORCH_CHECK_VALUE(false, "lookup failed: ", sidmlp::error_name(s.code),
                        " (is the index corrupt?)");
  }
}

// ---- shared argument checks ---------------------------------------------

struct StepInputs {
  Tensor logits, beam_scores, states;
  sidmlp::BeamStepArgs args;
};

StepInputs check_step_inputs(const Tensor& logits, const Tensor& beam_scores,
                             const Tensor& states, const IndexView& ix, int64_t level,
                             int64_t beam_size) {
  TORCH_CHECK_VALUE(logits.dim() == 3, "logits must be 3-D (batch, width, K), got shape ",
                    shape_str(logits));
  const auto dt = logits.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                   "logits must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK_TYPE(beam_scores.scalar_type() == at::kFloat, "beam_scores must be float32, got ",
                   beam_scores.scalar_type());
  check_integer(states, "states");
  const int64_t B = logits.size(0), W = logits.size(1);
  TORCH_CHECK_VALUE(beam_scores.dim() == 2 && beam_scores.size(0) == B && beam_scores.size(1) == W,
                    "beam_scores must have shape (", B, ", ", W, ") to match logits, got ",
                    shape_str(beam_scores));
  TORCH_CHECK_VALUE(states.dim() == 2 && states.size(0) == B && states.size(1) == W,
                    "states must have shape (", B, ", ", W, ") to match logits, got ",
                    shape_str(states));
  TORCH_CHECK_VALUE(beam_scores.device() == logits.device() && states.device() == logits.device(),
                    "logits, beam_scores and states must be on one device, got ", logits.device(),
                    ", ", beam_scores.device(), ", ", states.device());
  TORCH_CHECK_VALUE(level >= 0 && level < ix.num_levels, "level must be in [0, ", ix.num_levels,
                    "), got ", level);
  TORCH_CHECK_VALUE(logits.size(2) == ix.K[level], "logits must have K = ", ix.K[level],
                    " (codebook size of level ", level, ") in the last dim, got shape ",
                    shape_str(logits));
  TORCH_CHECK_VALUE(beam_size >= 1, "beam_size must be >= 1, got ", beam_size);

  StepInputs in;
  in.logits = logits.contiguous();
  in.beam_scores = beam_scores.contiguous();
  in.states = states.contiguous();
  auto& a = in.args;
  a.logits = in.logits.data_ptr();
  a.logit_type = dt == at::kFloat      ? sidmlp::LogitType::kFloat32
                 : dt == at::kBFloat16 ? sidmlp::LogitType::kBFloat16
                                       : sidmlp::LogitType::kFloat16;
  a.beam_scores = in.beam_scores.data_ptr<float>();
  a.states = in.states.data_ptr<int64_t>();
  a.batch = B;
  a.width = W;
  a.K = logits.size(2);
  a.level = static_cast<int>(level);
  a.beam = beam_size;
  std::string error;
  TORCH_CHECK_VALUE(sidmlp::check_beam_step_args(ix, a, &error), error);
  return in;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> alloc_step_outputs(StepInputs* in,
                                                              const at::TensorOptions& opts) {
  const int64_t B = in->args.batch, beam = in->args.beam;
  Tensor scores = at::empty({B, beam}, opts.dtype(at::kFloat));
  Tensor parents = at::empty({B, beam}, opts.dtype(at::kLong));
  Tensor tokens = at::empty({B, beam}, opts.dtype(at::kLong));
  Tensor new_states = at::empty({B, beam}, opts.dtype(at::kLong));
  in->args.out_scores = scores.data_ptr<float>();
  in->args.out_parents = parents.data_ptr<int64_t>();
  in->args.out_tokens = tokens.data_ptr<int64_t>();
  in->args.out_states = new_states.data_ptr<int64_t>();
  return {scores, parents, tokens, new_states};
}

void check_prefixes(const Tensor& prefixes, const IndexView& ix) {
  check_integer(prefixes, "prefixes");
  TORCH_CHECK_VALUE(prefixes.dim() == 2, "prefixes must be 2-D (n, length), got shape ",
                    shape_str(prefixes));
  TORCH_CHECK_VALUE(prefixes.size(1) <= ix.num_levels, "prefixes must have at most ",
                    ix.num_levels, " digits, got ", prefixes.size(1));
}

void check_finalize(const Tensor& states, const Tensor& scores, int64_t top_n) {
  check_integer(states, "states");
  TORCH_CHECK_TYPE(scores.scalar_type() == at::kFloat, "scores must be float32, got ",
                   scores.scalar_type());
  TORCH_CHECK_VALUE(states.dim() == 2, "states must be 2-D (batch, width), got shape ",
                    shape_str(states));
  TORCH_CHECK_VALUE(scores.sizes() == states.sizes(), "scores must have the shape of states ",
                    shape_str(states), ", got ", shape_str(scores));
  TORCH_CHECK_VALUE(scores.device() == states.device(), "states and scores must be on one device");
  TORCH_CHECK_VALUE(top_n >= 1, "top_n must be >= 1, got ", top_n);
}

void check_level(const IndexView& ix, int64_t level) {
  TORCH_CHECK_VALUE(level >= 0 && level < ix.num_levels, "level must be in [0, ", ix.num_levels,
                    "), got ", level);
}

void check_states_2d(const Tensor& states) {
  check_integer(states, "states");
  TORCH_CHECK_VALUE(states.dim() == 2, "states must be 2-D (batch, width), got shape ",
                    shape_str(states));
}

// Checks advance_states' inputs; returns the contiguous scores (undefined when absent).
Tensor check_advance(const Tensor& states, const Tensor& parents, const Tensor& tokens,
                     const std::optional<Tensor>& scores) {
  check_states_2d(states);
  check_integer(parents, "parents");
  check_integer(tokens, "tokens");
  TORCH_CHECK_VALUE(parents.dim() == 2 && parents.size(0) == states.size(0),
                    "parents must have shape (", states.size(0),
                    ", beam) to match states, got ", shape_str(parents));
  TORCH_CHECK_VALUE(tokens.sizes() == parents.sizes(), "tokens must have the shape of parents ",
                    shape_str(parents), ", got ", shape_str(tokens));
  TORCH_CHECK_VALUE(parents.device() == states.device() && tokens.device() == states.device(),
                    "states, parents and tokens must be on one device, got ", states.device(),
                    ", ", parents.device(), ", ", tokens.device());
  if (!scores.has_value()) return Tensor();
  const Tensor& sc = *scores;
  TORCH_CHECK_TYPE(sc.scalar_type() == at::kFloat, "scores must be float32, got ",
                   sc.scalar_type());
  TORCH_CHECK_VALUE(sc.sizes() == parents.sizes(), "scores must have the shape of parents ",
                    shape_str(parents), ", got ", shape_str(sc));
  TORCH_CHECK_VALUE(sc.device() == states.device(), "scores must be on the device of states (",
                    states.device(), "), got ", sc.device());
  return sc.contiguous();
}

void raise_masks(const Status& s, const IndexView& ix, int64_t level, int64_t width = -1) {
  switch (s.code) {
    case sidmlp::kStateOutOfRange:
      TORCH_CHECK_VALUE(false, "states[", s.row, ", ", s.col, "] = ",
                        static_cast<int64_t>(s.value), " is not a node of level ", level,
                        " (expected -1 or [0, ", ix.num_nodes(static_cast<int>(level)), "))");
    case sidmlp::kParentOutOfRange:
      TORCH_CHECK_VALUE(false, "parents[", s.row, ", ", s.col, "] = ",
                        static_cast<int64_t>(s.value), " is not a beam of states (expected [0, ",
                        width, "))");
    case sidmlp::kCodeOutOfRange:
      TORCH_CHECK_VALUE(false, "tokens[", s.row, ", ", s.col, "] = ",
                        static_cast<int64_t>(s.value), " is outside the codebook [0, ",
                        ix.K[level], ") of level ", level);
    case sidmlp::kBadScore:
      TORCH_CHECK_VALUE(false, "scores[", s.row, ", ", s.col, "] is ", s.value,
                        " (scores must be finite or -inf)");
    default:
      TORCH_CHECK_VALUE(false, "index lookup failed: ", sidmlp::error_name(s.code), " at [",
                        s.row, ", ", s.col, "] (is the index corrupt?)");
  }
}

// ---- CPU kernels ----------------------------------------------------------

std::vector<Tensor> build_index_cpu(const Tensor& codes, const Tensor& item_ids,
                                    at::IntArrayRef codebook_sizes, int64_t dense_depth,
                                    int64_t dense_limit) {
  check_integer(codes, "codes");
  check_integer(item_ids, "item_ids");
  TORCH_CHECK_VALUE(codes.dim() == 2, "codes must be 2-D (n_items, L), got shape ",
                    shape_str(codes));
  TORCH_CHECK_VALUE(item_ids.dim() == 1 && item_ids.size(0) == codes.size(0),
                    "item_ids must have shape (", codes.size(0), ",), got ", shape_str(item_ids));
  TORCH_CHECK_VALUE(static_cast<int64_t>(codebook_sizes.size()) == codes.size(1),
                    "codebook_sizes has ", codebook_sizes.size(), " entries but codes have ",
                    codes.size(1), " digits");
  const Tensor c = codes.contiguous();
  const Tensor i = item_ids.contiguous();
  sidmlp::IndexArrays arrays;
  std::string error;
  TORCH_CHECK_VALUE(sidmlp::build_index(c.data_ptr<int64_t>(), i.data_ptr<int64_t>(), c.size(0),
                                        c.size(1), codebook_sizes.data(), dense_depth,
                                        dense_limit, &arrays, &error),
                    error);
  auto to_tensor32 = [](const std::vector<int32_t>& v) {
    Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kInt);
    std::copy(v.begin(), v.end(), t.data_ptr<int32_t>());
    return t;
  };
  auto to_tensor64 = [](const std::vector<int64_t>& v) {
    Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
    std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
    return t;
  };
  return {to_tensor64(arrays.meta), to_tensor32(arrays.child_ptr), to_tensor32(arrays.token),
          to_tensor32(arrays.parent), to_tensor32(arrays.dense), to_tensor64(arrays.leaf_item)};
}

void validate_index_cpu(const std::vector<Tensor>& index, at::IntArrayRef meta) {
  const IndexView ix = make_view(index, meta, c10::Device(c10::kCPU));
  std::string error;
  TORCH_CHECK_VALUE(sidmlp::validate_index(ix, &error), "index is corrupt: ", error);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> beam_step_cpu(const Tensor& logits,
                                                         const Tensor& beam_scores,
                                                         const Tensor& states,
                                                         const std::vector<Tensor>& index,
                                                         at::IntArrayRef meta, int64_t level,
                                                         int64_t beam_size) {
  const IndexView ix = make_view(index, meta, logits.device());
  StepInputs in = check_step_inputs(logits, beam_scores, states, ix, level, beam_size);
  auto out = alloc_step_outputs(&in, logits.options());
  const sidmlp::BeamStepArgs& args = in.args;
  // Work per user ~ width * (mean children per node + 1); aim for ~32K
  // candidate visits per task so tiny deep-level steps stay single-threaded.
  const int64_t fanout = ix.num_nodes(args.level + 1) / ix.num_nodes(args.level) + 1;
  const int64_t work = std::max<int64_t>(1, args.width * fanout);
  const int64_t grain = std::max<int64_t>(1, 32768 / work);
  FirstError first;
  at::parallel_for(0, args.batch, grain, [&](int64_t begin, int64_t end) {
    sidmlp::BeamStepScratch scratch;
    scratch.heap.reserve(static_cast<size_t>(std::min<int64_t>(args.beam, 1 << 16)));
    for (int64_t b = begin; b < end; ++b) {
      const Status st = sidmlp::beam_step_user(ix, args, b, &scratch);
      if (!st.ok()) {
        first.record(st);
        return;
      }
    }
  });
  if (!first.get().ok()) raise_beam_step(first.get(), ix, level, args.K);
  return out;
}

Tensor prefix_states_cpu(const Tensor& prefixes, const std::vector<Tensor>& index,
                         at::IntArrayRef meta) {
  const IndexView ix = make_view(index, meta, prefixes.device());
  check_prefixes(prefixes, ix);
  const Tensor p = prefixes.contiguous();
  const int64_t n = p.size(0), len = p.size(1);
  Tensor out = at::empty({n}, p.options());
  const int64_t* src = p.data_ptr<int64_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  FirstError first;
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    const Status st = sidmlp::prefix_states(ix, src + begin * len, end - begin, len, dst + begin);
    if (!st.ok()) {
      Status shifted = st;
      shifted.row += begin;
      first.record(shifted);
    }
  });
  if (!first.get().ok()) raise_lookup(first.get(), "prefixes", len, ix);
  return out;
}

Tensor leaf_items_cpu(const Tensor& states, const std::vector<Tensor>& index,
                      at::IntArrayRef meta) {
  const IndexView ix = make_view(index, meta, states.device());
  check_integer(states, "states");
  const Tensor s = states.contiguous();
  Tensor out = at::empty_like(s);
  const int64_t* src = s.data_ptr<int64_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  FirstError first;
  at::parallel_for(0, s.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    const Status st = sidmlp::leaf_items(ix, src + begin, end - begin, dst + begin);
    if (!st.ok()) {
      Status shifted = st;
      shifted.row += begin;
      first.record(shifted);
    }
  });
  if (!first.get().ok()) raise_lookup(first.get(), "states", ix.num_levels, ix);
  return out;
}

std::tuple<Tensor, Tensor, Tensor> finalize_cpu(const Tensor& states, const Tensor& scores,
                                                const std::vector<Tensor>& index,
                                                at::IntArrayRef meta, int64_t top_n) {
  const IndexView ix = make_view(index, meta, states.device());
  check_finalize(states, scores, top_n);
  const Tensor st = states.contiguous();
  const Tensor sc = scores.contiguous();
  const int64_t B = st.size(0), W = st.size(1), L = ix.num_levels;
  Tensor items = at::empty({B, top_n}, st.options());
  Tensor codes = at::empty({B, top_n, L}, st.options());
  Tensor out_scores = at::empty({B, top_n}, sc.options());
  FirstError first;
  // ~W * top_n steps per user: keep small batches on one thread.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, W * top_n));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const Status s = sidmlp::finalize_user(
          ix, st.data_ptr<int64_t>() + b * W, sc.data_ptr<float>() + b * W, W, top_n, b,
          items.data_ptr<int64_t>() + b * top_n, codes.data_ptr<int64_t>() + b * top_n * L,
          out_scores.data_ptr<float>() + b * top_n);
      if (!s.ok()) {
        first.record(s);
        return;
      }
    }
  });
  if (!first.get().ok()) raise_lookup(first.get(), "states", L, ix);
  return {items, codes, out_scores};
}

Tensor valid_mask_cpu(const Tensor& states, const std::vector<Tensor>& index,
                      at::IntArrayRef meta, int64_t level) {
  const IndexView ix = make_view(index, meta, states.device());
  check_states_2d(states);
  check_level(ix, level);
  const Tensor st = states.contiguous();
  const int64_t B = st.size(0), W = st.size(1), K = ix.K[level];
  Tensor out = at::zeros({B, W, K}, st.options().dtype(at::kBool));
  const int64_t* src = st.data_ptr<int64_t>();
  uint8_t* dst = reinterpret_cast<uint8_t*>(out.data_ptr<bool>());
  // ~W * (children per node) writes per user.
  const int64_t fanout = ix.num_nodes(static_cast<int>(level) + 1) /
                             std::max<int64_t>(1, ix.num_nodes(static_cast<int>(level))) + 1;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, W * fanout));
  FirstError first;
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    Status s = sidmlp::valid_mask(ix, static_cast<int>(level), src + begin * W, end - begin, W,
                                  dst + begin * W * K);
    if (!s.ok()) {
      s.row += begin;
      first.record(s);
    }
  });
  if (!first.get().ok()) raise_masks(first.get(), ix, level);
  return out;
}

Tensor advance_states_cpu(const Tensor& states, const Tensor& parents, const Tensor& tokens,
                          const std::vector<Tensor>& index, at::IntArrayRef meta, int64_t level,
                          const std::optional<Tensor>& scores) {
  const IndexView ix = make_view(index, meta, states.device());
  const Tensor sc = check_advance(states, parents, tokens, scores);
  check_level(ix, level);
  const Tensor st = states.contiguous();
  const Tensor pa = parents.contiguous();
  const Tensor to = tokens.contiguous();
  const int64_t B = st.size(0), W = st.size(1), beam = pa.size(1);
  Tensor out = at::empty({B, beam}, st.options());
  const float* score_ptr = sc.defined() ? sc.data_ptr<float>() : nullptr;
  FirstError first;
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, beam)),
                   [&](int64_t begin, int64_t end) {
    Status s = sidmlp::advance_states(
        ix, static_cast<int>(level), st.data_ptr<int64_t>() + begin * W, end - begin, W,
        pa.data_ptr<int64_t>() + begin * beam, to.data_ptr<int64_t>() + begin * beam,
        score_ptr ? score_ptr + begin * beam : nullptr, beam,
        out.data_ptr<int64_t>() + begin * beam);
    if (!s.ok()) {
      s.row += begin;
      first.record(s);
    }
  });
  if (!first.get().ok()) raise_masks(first.get(), ix, level, W);
  return out;
}

Tensor child_logits_cpu(const Tensor& hidden, const Tensor& rows, const Tensor& out_w,
                        const Tensor& out_b, const Tensor& states,
                        const std::vector<Tensor>& index, at::IntArrayRef meta, int64_t level) {
  const IndexView ix = make_view(index, meta, states.device());
  check_states_2d(states);
  check_level(ix, level);
  check_integer(rows, "rows");
  TORCH_CHECK_VALUE(rows.sizes() == states.sizes(), "rows must have the shape of states ",
                    shape_str(states), ", got ", shape_str(rows));
  for (const Tensor* t : {&hidden, &out_w, &out_b}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, "hidden, out_w and out_b must be float32, got ",
                     t->scalar_type());
  }
  TORCH_CHECK_VALUE(hidden.dim() == 2, "hidden must be 2-D (rows, H), got shape ",
                    shape_str(hidden));
  const int64_t H = hidden.size(1), K = ix.K[level];
  TORCH_CHECK_VALUE(out_w.dim() == 2 && out_w.size(0) == K && out_w.size(1) == H,
                    "out_w must have shape (", K, ", ", H, "), got ", shape_str(out_w));
  TORCH_CHECK_VALUE(out_b.dim() == 1 && out_b.size(0) == K, "out_b must have shape (", K,
                    ",), got ", shape_str(out_b));
  for (const Tensor* t : {&hidden, &rows, &out_w, &out_b}) {
    TORCH_CHECK_VALUE(t->device() == states.device(), "hidden, rows, out_w, out_b and states ",
                      "must be on one device, got ", t->device(), " and ", states.device());
  }
  const Tensor h = hidden.contiguous(), r = rows.contiguous(), w = out_w.contiguous();
  const Tensor bias = out_b.contiguous(), st = states.contiguous();
  const int64_t B = st.size(0), W = st.size(1);
  Tensor out = at::zeros({B, W, K}, h.options());
  // ~W * fanout * H multiply-adds per user.
  const int64_t fanout = ix.num_nodes(static_cast<int>(level) + 1) /
                             std::max<int64_t>(1, ix.num_nodes(static_cast<int>(level))) + 1;
  const int64_t grain = std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, W * fanout * H));
  FirstError first;
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    Status s = sidmlp::child_logits(ix, static_cast<int>(level), st.data_ptr<int64_t>() + begin * W,
                                    r.data_ptr<int64_t>() + begin * W, end - begin, W,
                                    h.data_ptr<float>(), h.size(0), H, w.data_ptr<float>(),
                                    bias.data_ptr<float>(), out.data_ptr<float>() + begin * W * K);
    if (!s.ok()) {
      s.row += begin;
      first.record(s);
    }
  });
  const Status& s = first.get();
  if (s.code == sidmlp::kRowOutOfRange) {
    TORCH_CHECK_VALUE(false, "rows[", s.row, ", ", s.col, "] = ", static_cast<int64_t>(s.value),
                      " is not a row of hidden (expected [0, ", h.size(0), ") for a live beam)");
  }
  if (!s.ok()) raise_masks(s, ix, level, W);
  return out;
}

// ---- CUDA kernels -----------------------------------------------------------

#ifdef SIDMLP_WITH_CUDA

void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

Tensor new_status(const at::TensorOptions& opts) {
  return at::zeros({static_cast<int64_t>(sizeof(Status))}, opts.dtype(at::kByte));
}

Status read_status(const Tensor& status) {
  const Tensor host = status.cpu();  // synchronises: data errors surface here
  Status s;
  std::memcpy(&s, host.data_ptr<uint8_t>(), sizeof(Status));
  return s;
}

void check_launch(int rc) {
  TORCH_CHECK(rc == 0, "sidmlp CUDA launch failed: ", sidmlp::cuda::error_string(rc));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> beam_step_cuda(const Tensor& logits,
                                                          const Tensor& beam_scores,
                                                          const Tensor& states,
                                                          const std::vector<Tensor>& index,
                                                          at::IntArrayRef meta, int64_t level,
                                                          int64_t beam_size) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const IndexView ix = make_view(index, meta, logits.device());
  StepInputs in = check_step_inputs(logits, beam_scores, states, ix, level, beam_size);
  auto out = alloc_step_outputs(&in, logits.options());
  const auto& a = in.args;
  const int64_t bytes = sidmlp::cuda::beam_step_workspace_bytes(a.batch, a.width, a.K, a.beam);
  Tensor workspace = at::empty({std::max<int64_t>(bytes, 8)}, logits.options().dtype(at::kByte));
  Tensor status = new_status(logits.options());
  check_launch(sidmlp::cuda::launch_beam_step(ix, a, workspace.data_ptr(),
                                              reinterpret_cast<Status*>(status.data_ptr()),
                                              current_stream()));
  const Status s = read_status(status);
  if (!s.ok()) raise_beam_step(s, ix, level, a.K);
  return out;
}

Tensor prefix_states_cuda(const Tensor& prefixes, const std::vector<Tensor>& index,
                          at::IntArrayRef meta) {
  const c10::cuda::CUDAGuard guard(prefixes.device());
  const IndexView ix = make_view(index, meta, prefixes.device());
  check_prefixes(prefixes, ix);
  const Tensor p = prefixes.contiguous();
  Tensor out = at::empty({p.size(0)}, p.options());
  Tensor status = new_status(p.options());
  check_launch(sidmlp::cuda::launch_prefix_states(
      ix, p.data_ptr<int64_t>(), p.size(0), p.size(1), out.data_ptr<int64_t>(),
      reinterpret_cast<Status*>(status.data_ptr()), current_stream()));
  const Status s = read_status(status);
  if (!s.ok()) raise_lookup(s, "prefixes", p.size(1), ix);
  return out;
}

Tensor leaf_items_cuda(const Tensor& states, const std::vector<Tensor>& index,
                       at::IntArrayRef meta) {
  const c10::cuda::CUDAGuard guard(states.device());
  const IndexView ix = make_view(index, meta, states.device());
  check_integer(states, "states");
  const Tensor s = states.contiguous();
  Tensor out = at::empty_like(s);
  Tensor status = new_status(s.options());
  check_launch(sidmlp::cuda::launch_leaf_items(ix, s.data_ptr<int64_t>(), s.numel(),
                                               out.data_ptr<int64_t>(),
                                               reinterpret_cast<Status*>(status.data_ptr()),
                                               current_stream()));
  const Status st = read_status(status);
  if (!st.ok()) raise_lookup(st, "states", ix.num_levels, ix);
  return out;
}

std::tuple<Tensor, Tensor, Tensor> finalize_cuda(const Tensor& states, const Tensor& scores,
                                                 const std::vector<Tensor>& index,
                                                 at::IntArrayRef meta, int64_t top_n) {
  const c10::cuda::CUDAGuard guard(states.device());
  const IndexView ix = make_view(index, meta, states.device());
  check_finalize(states, scores, top_n);
  const Tensor st = states.contiguous();
  const Tensor sc = scores.contiguous();
  const int64_t B = st.size(0), W = st.size(1), L = ix.num_levels;
  Tensor items = at::empty({B, top_n}, st.options());
  Tensor codes = at::empty({B, top_n, L}, st.options());
  Tensor out_scores = at::empty({B, top_n}, sc.options());
  Tensor status = new_status(st.options());
  check_launch(sidmlp::cuda::launch_finalize(
      ix, st.data_ptr<int64_t>(), sc.data_ptr<float>(), B, W, top_n, items.data_ptr<int64_t>(),
      codes.data_ptr<int64_t>(), out_scores.data_ptr<float>(),
      reinterpret_cast<Status*>(status.data_ptr()), current_stream()));
  const Status s = read_status(status);
  if (!s.ok()) raise_lookup(s, "states", L, ix);
  return {items, codes, out_scores};
}

Tensor valid_mask_cuda(const Tensor& states, const std::vector<Tensor>& index,
                       at::IntArrayRef meta, int64_t level) {
  const c10::cuda::CUDAGuard guard(states.device());
  const IndexView ix = make_view(index, meta, states.device());
  check_states_2d(states);
  check_level(ix, level);
  const Tensor st = states.contiguous();
  const int64_t B = st.size(0), W = st.size(1);
  Tensor out = at::zeros({B, W, ix.K[level]}, st.options().dtype(at::kBool));
  Tensor status = new_status(st.options());
  check_launch(sidmlp::cuda::launch_valid_mask(
      ix, static_cast<int>(level), st.data_ptr<int64_t>(), B, W,
      reinterpret_cast<uint8_t*>(out.data_ptr<bool>()),
      reinterpret_cast<Status*>(status.data_ptr()), current_stream()));
  const Status s = read_status(status);
  if (!s.ok()) raise_masks(s, ix, level);
  return out;
}

Tensor advance_states_cuda(const Tensor& states, const Tensor& parents, const Tensor& tokens,
                           const std::vector<Tensor>& index, at::IntArrayRef meta, int64_t level,
                           const std::optional<Tensor>& scores) {
  const c10::cuda::CUDAGuard guard(states.device());
  const IndexView ix = make_view(index, meta, states.device());
  const Tensor sc = check_advance(states, parents, tokens, scores);
  check_level(ix, level);
  const Tensor st = states.contiguous();
  const Tensor pa = parents.contiguous();
  const Tensor to = tokens.contiguous();
  const int64_t B = st.size(0), W = st.size(1), beam = pa.size(1);
  Tensor out = at::empty({B, beam}, st.options());
  Tensor status = new_status(st.options());
  check_launch(sidmlp::cuda::launch_advance_states(
      ix, static_cast<int>(level), st.data_ptr<int64_t>(), B, W, pa.data_ptr<int64_t>(),
      to.data_ptr<int64_t>(), sc.defined() ? sc.data_ptr<float>() : nullptr, beam,
      out.data_ptr<int64_t>(), reinterpret_cast<Status*>(status.data_ptr()), current_stream()));
  const Status s = read_status(status);
  if (!s.ok()) raise_masks(s, ix, level, W);
  return out;
}

#endif  // SIDMLP_WITH_CUDA

}  // namespace

TORCH_LIBRARY(sidmlp, m) {
  m.def(
      "build_index(Tensor codes, Tensor item_ids, int[] codebook_sizes, int dense_depth, "
      "int dense_limit) -> Tensor[]");
  m.def("validate_index(Tensor[] index, int[] meta) -> ()");
  m.def(
      "beam_step(Tensor logits, Tensor beam_scores, Tensor states, Tensor[] index, int[] meta, "
      "int level, int beam_size) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("prefix_states(Tensor prefixes, Tensor[] index, int[] meta) -> Tensor");
  m.def("leaf_items(Tensor states, Tensor[] index, int[] meta) -> Tensor");
  m.def(
      "finalize(Tensor states, Tensor scores, Tensor[] index, int[] meta, int top_n) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("valid_mask(Tensor states, Tensor[] index, int[] meta, int level) -> Tensor");
  m.def(
      "advance_states(Tensor states, Tensor parents, Tensor tokens, Tensor[] index, int[] meta, "
      "int level, Tensor? scores=None) -> Tensor");
  m.def(
      "child_logits(Tensor hidden, Tensor rows, Tensor out_w, Tensor out_b, Tensor states, "
      "Tensor[] index, int[] meta, int level) -> Tensor");
}

TORCH_LIBRARY_IMPL(sidmlp, CPU, m) {
  m.impl("build_index", &build_index_cpu);
  m.impl("validate_index", &validate_index_cpu);
  m.impl("beam_step", &beam_step_cpu);
  m.impl("prefix_states", &prefix_states_cpu);
  m.impl("leaf_items", &leaf_items_cpu);
  m.impl("finalize", &finalize_cpu);
  m.impl("valid_mask", &valid_mask_cpu);
  m.impl("advance_states", &advance_states_cpu);
  m.impl("child_logits", &child_logits_cpu);
}

#ifdef SIDMLP_WITH_CUDA
TORCH_LIBRARY_IMPL(sidmlp, CUDA, m) {
  m.impl("beam_step", &beam_step_cuda);
  m.impl("prefix_states", &prefix_states_cuda);
  m.impl("leaf_items", &leaf_items_cuda);
  m.impl("finalize", &finalize_cuda);
  m.impl("valid_mask", &valid_mask_cuda);
  m.impl("advance_states", &advance_states_cuda);
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sidmlp-kernels C++/CUDA ops; registered as torch.ops.sidmlp.*";
  m.def("compiled_with_cuda", []() {
#ifdef SIDMLP_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
