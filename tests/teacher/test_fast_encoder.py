"""FastT5Encoder against HF's T5 encoder: equal states for every config, padding and backend."""

import copy
import functools
import pickle

import pytest
import torch
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from sidmlp_kernels.teacher.fast_encoder import FastT5Encoder, mkldnn_linear_available, relative_position_bucket

ATOL = 1e-5

BACKENDS = ["mm"] + (["mkldnn"] if mkldnn_linear_available() else [])


def t5(seed=0, cls=T5ForConditionalGeneration, attn="sdpa", **kw):
    """A random T5 (cached: tests only read it) with non-trivial norm gains."""
    return _t5(seed, cls, attn, tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=None)
def _t5(seed, cls, attn, kw):
    kw = dict(kw)
    base = dict(
        vocab_size=1 + 4 * 16 + 2, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=3, d_kv=8,
        feed_forward_proj="relu", pad_token_id=0, eos_token_id=66, decoder_start_token_id=0, dropout_rate=0.1,
    )
    base.update(kw)
    torch.manual_seed(seed)
    model = cls(T5Config(**base)).eval()
    model.set_attn_implementation(attn)
    with torch.no_grad():  # non-trivial norm gains, so folding them into the weights is exercised
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def batch(vocab, b, t, pad="right", seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    if pad != "none":
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        lengths[0] = t  # one full row
        if b > 1:
            lengths[1] = 1  # one single-token row
        for i, n in enumerate(lengths.tolist()):
            side = pad if pad != "mixed" else ("left" if i % 2 else "right")
            if side == "right":
                mask[i, n:] = 0
            else:
                mask[i, : t - n] = 0
        ids = ids * mask  # pad id 0 at padded positions
    return ids, mask


def hf_states(model, ids, mask):
    with torch.no_grad():
        return model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad", ["none", "right", "left", "mixed"])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"feed_forward_proj": "gated-gelu"},
        {"feed_forward_proj": "gated-silu", "num_layers": 3},
        {"feed_forward_proj": "gelu", "num_layers": 1, "num_heads": 1, "d_kv": 16, "d_model": 24},
        {"num_heads": 5, "d_kv": 4, "d_ff": 48, "relative_attention_num_buckets": 8,
         "relative_attention_max_distance": 12},
    ],
    ids=["relu", "gated-gelu", "gated-silu", "gelu-1head", "buckets8"],
)
def test_matches_hf(kw, pad, backend):
    model = t5(**kw)
    fast = FastT5Encoder.from_hf(model, backend=backend)
    ids, mask = batch(model.config.vocab_size, 6, 40, pad)
    ref = hf_states(model, ids, mask)
    out = fast(ids, mask)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("pad", ["none", "mixed"])
def test_paper_config(attn, pad):
    """TIGER: 4 layers, d_model 128, d_ff 1024, 6 heads, d_kv 64, T = 1 + 20*4 + 1."""
    model = t5(attn=attn, d_model=128, d_ff=1024, num_layers=4, num_heads=6, d_kv=64, vocab_size=1 + 4 * 256 + 2)
    fast = FastT5Encoder.from_hf(model)
    ids, mask = batch(model.config.vocab_size, 5, 82, pad, seed=3)
    torch.testing.assert_close(fast(ids, mask), hf_states(model, ids, mask), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("cls", [T5ForConditionalGeneration, T5EncoderModel])
def test_model_kinds_and_mask_forms(cls):
    model = t5(cls=cls)
    ids, mask = batch(model.config.vocab_size, 4, 17, "right")
    ref = hf_states(model, ids, mask)
    for src in (model, model.get_encoder()):
        fast = FastT5Encoder.from_hf(src)
        torch.testing.assert_close(fast(ids, mask), ref, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(fast(ids, mask.bool()), ref, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(fast(ids, mask.float()), ref, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(fast(ids.int(), mask), ref, atol=ATOL, rtol=1e-5)
    full = torch.ones_like(ids)
    torch.testing.assert_close(fast(ids), hf_states(model, ids, full), atol=ATOL, rtol=1e-5)


def test_lengths_share_bias_cache_and_table_off():
    model = t5()
    fast = FastT5Encoder.from_hf(model)
    no_table = FastT5Encoder.from_hf(model)
    no_table.use_table = False
    for t in (1, 3, 40, 3, 200):  # lengths past max_distance hit the log buckets' cap
        ids, mask = batch(model.config.vocab_size, 3, t, "right" if t > 1 else "none", seed=t)
        ref = hf_states(model, ids, mask)
        torch.testing.assert_close(fast(ids, mask), ref, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(no_table(ids, mask), ref, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad", ["right", "left", "mixed", "none"])
def test_skip_padding_exact_on_real_tokens(pad, backend):
    model = t5(feed_forward_proj="gated-gelu")
    fast = FastT5Encoder.from_hf(model, skip_padding=True, backend=backend)
    ids, mask = batch(model.config.vocab_size, 7, 30, pad, seed=5)
    ref = hf_states(model, ids, mask)
    out = fast(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=1e-5)
    assert (out[~real] == 0).all()


def test_skip_padding_trims_common_padding():
    model = t5()
    fast = FastT5Encoder.from_hf(model, skip_padding=True)
    ids, mask = batch(model.config.vocab_size, 4, 20, "none")
    mask[:, 15:] = 0  # all rows the same length: trimming alone removes the padding
    mask[:, :2] = 0
    ids = ids * mask
    ref = hf_states(model, ids, mask)
    out = fast(ids, mask)
    torch.testing.assert_close(out[:, 2:15], ref[:, 2:15], atol=ATOL, rtol=1e-5)
    assert (out[:, :2] == 0).all() and (out[:, 15:] == 0).all()


@pytest.mark.parametrize("rel", [torch.arange(-300, 301)])
@pytest.mark.parametrize("buckets, dist", [(32, 128), (8, 12), (16, 20)])
def test_bucket_matches_hf(rel, buckets, dist):
    ours = relative_position_bucket(rel, True, buckets, dist)
    theirs = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=buckets, max_distance=dist)
    assert torch.equal(ours, theirs)


def test_copy_pickle_and_cast_invalidate_caches():
    model = t5()
    fast = FastT5Encoder.from_hf(model)
    ids, mask = batch(model.config.vocab_size, 3, 12, "mixed")
    ref = fast(ids, mask)  # fills the packed-weight, table and bias caches
    torch.testing.assert_close(copy.deepcopy(fast)(ids, mask), ref, atol=0, rtol=0)
    torch.testing.assert_close(pickle.loads(pickle.dumps(fast))(ids, mask), ref, atol=0, rtol=0)
    f64 = copy.deepcopy(fast).to(torch.float64)
    assert f64.resolved_backend == "mm"
    torch.testing.assert_close(f64(ids, mask).float(), ref, atol=ATOL, rtol=1e-5)
    clone = FastT5Encoder.from_hf(t5(seed=1))
    clone.load_state_dict(fast.state_dict())
    torch.testing.assert_close(clone(ids, mask), ref, atol=0, rtol=0)


def test_backend_env_override(monkeypatch):
    monkeypatch.setenv("SIDMLP_ENCODER_BACKEND", "mm")
    fast = FastT5Encoder.from_hf(t5())
    assert fast.resolved_backend == "mm"
    ids, mask = batch(67, 3, 9, "mixed")
    torch.testing.assert_close(fast(ids, mask), hf_states(t5(), ids, mask), atol=ATOL, rtol=1e-5)
    monkeypatch.setenv("SIDMLP_ENCODER_BACKEND", "tpu")
    with pytest.raises(ValueError, match="backend"):
        FastT5Encoder.from_hf(t5())


def test_no_grad_and_eval_by_default():
    fast = FastT5Encoder.from_hf(t5())
    assert not fast.training
    out = fast(*batch(67, 2, 5))
    assert not out.requires_grad


# ---------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def fast():
    return FastT5Encoder.from_hf(t5())


@pytest.mark.parametrize("bad", [-1, 67, 10_000])
def test_ids_out_of_range(fast, bad):
    ids, mask = batch(67, 2, 5)
    ids[1, 2] = bad
    with pytest.raises(ValueError, match="input_ids"):
        fast(ids, mask)


@pytest.mark.parametrize(
    "ids",
    [torch.ones(5, dtype=torch.long), torch.ones(2, 5), torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 0, dtype=torch.long),
     torch.ones(0, 5, dtype=torch.long), [[1, 2]]],
    ids=["1d", "float", "bool", "empty-T", "empty-B", "list"],
)
def test_ids_bad_shape_or_dtype(fast, ids):
    with pytest.raises(ValueError, match="input_ids"):
        fast(ids)


@pytest.mark.parametrize(
    "mask",
    [torch.ones(2, 4, dtype=torch.long), torch.ones(3, 5, dtype=torch.long), torch.ones(2, 5, 1, dtype=torch.long),
     torch.full((2, 5), 2), "ones"],
    ids=["short", "rows", "3d", "values", "not-tensor"],
)
def test_mask_mismatch(fast, mask):
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="attention_mask"):
        fast(ids, mask)


def test_mask_empty_row(fast):
    ids, mask = batch(67, 3, 5, "none")
    mask[2] = 0
    with pytest.raises(ValueError, match="attention_mask row 2"):
        fast(ids, mask)


def test_bad_model_and_backend():
    with pytest.raises(ValueError, match="model"):
        FastT5Encoder.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="decoder"):
        FastT5Encoder.from_hf(t5().decoder)
    with pytest.raises(ValueError, match="backend"):
        FastT5Encoder.from_hf(t5(), backend="cuda-magic")


def test_weights_are_copies():
    model = t5(seed=2)
    fast = FastT5Encoder.from_hf(model)
    ours = {t.data_ptr() for t in fast.buffers()}
    assert not ours & {p.data_ptr() for p in model.parameters()}


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("pad", ["none", "right", "mixed"])
@pytest.mark.parametrize("max_rows", [1, 50, 64, 0, None])
def test_sub_batches_match(max_rows, pad, skip):
    """Splitting the batch into <= max_rows-token sub-batches changes nothing."""
    model = t5()
    fast = FastT5Encoder.from_hf(model, max_rows=max_rows, skip_padding=skip)
    ids, mask = batch(model.config.vocab_size, 9, 16, pad, seed=7)
    ref = hf_states(model, ids, mask)
    real = mask.bool()
    out = fast(ids, mask)
    torch.testing.assert_close(out[real], ref[real], atol=ATOL, rtol=1e-5)
    if not skip:
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="max_rows"):
        FastT5Encoder.from_hf(model, max_rows=-1)


def test_auto_sub_batches_single_thread():
    model = t5()
    fast = FastT5Encoder.from_hf(model)
    ids, mask = batch(model.config.vocab_size, 70, 64, "mixed", seed=8)  # 4480 tokens > 4096
    ref = hf_states(model, ids, mask)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.testing.assert_close(fast(ids, mask), ref, atol=ATOL, rtol=1e-5)
    finally:
        torch.set_num_threads(threads)
