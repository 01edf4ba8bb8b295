import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.teacher.adapters import (
    CausalLMTeacherAdapter,
    Encoded,
    T5TeacherAdapter,
    TeacherAdapter,
    adapter_for,
    as_adapter,
)
from sidmlp_kernels.data.examples import build_examples, synthetic_data
from sidmlp_kernels.data.layout import TokenLayout, to_left_padding
from sidmlp_kernels.teacher.models import build_gpt2_teacher, build_t5_teacher


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    catalog, split = synthetic_data((7, 5, 4, 3), num_items=60, num_users=20, seed=2)
    layout = TokenLayout.for_catalog(catalog)
    ex = build_examples(split, catalog, layout, "test")
    ids, mask, codes, _ = ex.batch(torch.arange(5))
    return catalog, layout, ids, mask, codes


def models(layout):
    return {
        "t5": build_t5_teacher(layout, "tiny", seed=0).eval(),
        "gpt2": build_gpt2_teacher(layout, "tiny", max_positions=64, seed=0).eval(),
    }


@torch.no_grad()
def test_t5_digit_logits_equal_hf_teacher_forcing(setup):
    catalog, layout, ids, mask, codes = setup
    model = models(layout)["t5"]
    adapter = adapter_for(model, layout, catalog)
    assert isinstance(adapter, T5TeacherAdapter) and isinstance(adapter, TeacherAdapter)
    enc = adapter.encode(ids, mask)
    assert enc.states.shape == (5, ids.shape[1], adapter.hidden_size) and enc.mask.dtype == torch.bool
    torch.testing.assert_close(enc.states, model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state)
    labels = torch.cat([layout.codes_to_tokens(codes), torch.full((5, 1), layout.eos_id)], dim=1)
    full = model(input_ids=ids, attention_mask=mask, labels=labels).logits
    out = adapter.digit_logits(enc, codes)
    assert len(out) == layout.num_levels
    for level, logits in enumerate(out):
        start, stop = layout.digit_token_range(level)
        assert logits.shape == (5, layout.codebook_sizes[level])
        torch.testing.assert_close(logits, full[:, level, start:stop], atol=1e-5, rtol=1e-5)
    # The last digit's code is not fed back, so (B, L-1) prefixes give the same logits.
    for a, b in zip(out, adapter.digit_logits(enc, codes[:, :-1])):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_causal_digit_logits_equal_full_forward(setup):
    catalog, layout, ids, mask, codes = setup
    model = models(layout)["gpt2"]
    adapter = adapter_for(model, layout, catalog)
    assert isinstance(adapter, CausalLMTeacherAdapter) and isinstance(adapter, TeacherAdapter)
    enc = adapter.encode(ids, mask)  # right-padded in, re-padded on the left
    assert enc.mask[:, -1].all() and enc.input_ids is not None
    left_ids, left_mask = to_left_padding(ids, mask)
    tokens = layout.codes_to_tokens(codes)
    seq = torch.cat([left_ids, tokens[:, :-1]], dim=1)
    seq_mask = torch.cat([left_mask, torch.ones_like(tokens[:, :-1])], dim=1)
    pos = (seq_mask.cumsum(1) - 1).clamp(min=0)
    full = model(input_ids=seq, attention_mask=seq_mask, position_ids=pos).logits
    t = ids.shape[1]
    for level, logits in enumerate(adapter.digit_logits(enc, codes)):
        start, stop = layout.digit_token_range(level)
        torch.testing.assert_close(logits, full[:, t - 1 + level, start:stop], atol=1e-5, rtol=1e-5)
    # One pass (encode_and_digit_logits) gives the same states and logits as encode + digit_logits.
    enc1, logits1 = adapter.encode_and_digit_logits(ids, mask, codes)
    torch.testing.assert_close(enc1.states, enc.states, atol=1e-5, rtol=1e-5)
    assert torch.equal(enc1.mask, enc.mask) and torch.equal(enc1.input_ids, enc.input_ids)
    for a, b in zip(logits1, adapter.digit_logits(enc, codes)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Encoding already left-padded inputs gives the same states.
    again = adapter.encode(left_ids, left_mask)
    torch.testing.assert_close(again.states, enc.states)


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
@torch.no_grad()
def test_padding_invariance_and_code_embeddings(setup, arch):
    catalog, layout, ids, mask, codes = setup
    model = models(layout)[arch]
    adapter = adapter_for(model, layout)
    batch = adapter.digit_logits(adapter.encode(ids, mask), codes)
    row = int(mask.sum(1).argmin())
    n = int(mask[row].sum())
    single = adapter.digit_logits(adapter.encode(ids[row : row + 1, :n], mask[row : row + 1, :n]), codes[row : row + 1])
    for a, b in zip(batch, single):
        torch.testing.assert_close(a[row : row + 1], b, atol=1e-5, rtol=1e-5)
    emb = model.get_input_embeddings().weight
    for level in range(layout.num_levels):
        table = adapter.code_embeddings(level)
        start, stop = layout.digit_token_range(level)
        assert table.shape == (layout.codebook_sizes[level], adapter.hidden_size)
        assert torch.equal(table, emb[start:stop])


def test_adapter_errors(setup):
    catalog, layout, ids, mask, codes = setup
    ms = models(layout)
    other = SIDCatalog.from_codes(torch.arange(2), torch.tensor([[0, 0, 0], [1, 1, 1]]), [7, 5, 4])
    for model in ms.values():
        with pytest.raises(ValueError, match="does not match the catalog"):
            adapter_for(model, layout, other)
        adapter = adapter_for(model, layout)
        enc = adapter.encode(ids, mask)
        with pytest.raises(ValueError, match="prefix_codes must have shape"):
            adapter.digit_logits(enc, codes[:, :2])
        with pytest.raises(ValueError, match="prefix_codes must have shape"):
            adapter.digit_logits(enc, codes[:3])
        bad = codes.clone()
        bad[0, 1] = 5
        with pytest.raises(ValueError, match="codebook"):
            adapter.digit_logits(enc, bad)
        with pytest.raises(ValueError, match="empty history"):
            adapter.encode(ids, torch.zeros_like(mask))
        too_big = ids.clone()
        too_big[0, 0] = model.config.vocab_size
        with pytest.raises(ValueError, match="input_ids must be in"):
            adapter.encode(too_big, mask)
    with pytest.raises(ValueError, match="token embeddings"):
        adapter_for(ms["t5"], TokenLayout((7, 5, 4, 30)))
    with pytest.raises(ValueError, match="eos_token_id"):
        adapter_for(ms["t5"], TokenLayout((7, 5, 4, 2)))
    with pytest.raises(ValueError, match="encoder-decoder"):
        T5TeacherAdapter(ms["gpt2"], layout)
    with pytest.raises(ValueError, match="decoder-only"):
        CausalLMTeacherAdapter(ms["t5"], layout)
    causal = adapter_for(ms["gpt2"], layout)
    with pytest.raises(ValueError, match="input_ids is None"):
        causal.digit_logits(Encoded(torch.zeros(5, 3, 32), torch.ones(5, 3, dtype=torch.bool)), codes)


def test_sidmlp_pp_encoder_mixer_auto_follows_the_teacher(setup):
    from sidmlp_kernels.accelerated import new_mlp_encoder
    from sidmlp_kernels.configs import AccelerateConfig

    cat, layout = setup[0], setup[1]
    ms = models(layout)
    # A decoder-only teacher's states see only earlier tokens: the MLP encoder mixes causally for it.
    assert new_mlp_encoder(as_adapter(ms["gpt2"], layout)).config.mixer == "causal"
    assert new_mlp_encoder(as_adapter(ms["t5"], layout)).config.mixer == "mean"
    forced = AccelerateConfig().with_overrides(encoder_mixer="mean")
    assert new_mlp_encoder(as_adapter(ms["gpt2"], layout), forced).config.mixer == "mean"
    with pytest.raises(ValueError, match="mixer must be one of"):
        AccelerateConfig().with_overrides(encoder_mixer="attention")


@torch.no_grad()
def test_sidmlp_pp_encoder_drops_the_eos_an_items_prompt_lacks(setup):
    """Stage 1 fits states of the teacher's prompt; inference must feed the encoder that same prompt."""
    from sidmlp_kernels.accelerated import new_mlp_encoder
    from sidmlp_kernels.teacher.adapters import causal_prompt

    cat, layout, ids, mask, codes = setup
    model = build_gpt2_teacher(layout, "tiny", max_positions=64, seed=0, prompt="items").eval()
    enc = new_mlp_encoder(as_adapter(model, layout)).eval()
    assert enc.config.strip_eos_id == layout.eos_id
    pids, pmask = causal_prompt(model, layout, ids, mask)
    assert not (pids[pmask.bool()] == layout.eos_id).any()
    out = enc(ids, mask)
    torch.testing.assert_close(out.input_ids, pids, rtol=0, atol=0)
    torch.testing.assert_close(out.states[out.mask], enc.states(pids, pmask)[pmask.bool()], rtol=0, atol=0)
    torch.testing.assert_close(enc(pids, pmask, is_prompt=True).states, out.states, rtol=0, atol=0)
    with pytest.raises(ValueError, match="must end with the EOS token"):
        enc(pids, pmask)
    # An "eos" prompt and an encoder-decoder teacher keep the inputs' EOS.
    for other in (models(layout)["gpt2"], models(layout)["t5"]):
        assert new_mlp_encoder(as_adapter(other, layout)).config.strip_eos_id is None
