"""Shared test doubles."""

import torch

from sidmlp_kernels.decode.types import Encoded, GenerationOutput
from sidmlp_kernels.data.layout import TokenLayout


class FakeAdapter:
    """A tiny deterministic teacher implementing the TeacherAdapter protocol; counts its encoder calls."""

    def __init__(self, sizes, d=8, seed=0, num_user_tokens=1):
        self.layout = TokenLayout(tuple(sizes), num_user_tokens=num_user_tokens)
        self.hidden_size = d
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(self.layout.vocab_size, d, generator=g)
        self.calls = 0

    def encode(self, ids, mask):
        self.layout.check_inputs(ids, mask)
        self.calls += 1
        return Encoded(torch.tanh(self.emb[ids]), mask.bool())

    def digit_logits(self, enc, codes):
        m = enc.mask.float().unsqueeze(-1)
        h = (enc.states * m).sum(1) / m.sum(1)
        out = []
        for l in range(self.layout.num_levels):
            s, e = self.layout.digit_token_range(l)
            out.append(3 * h @ self.emb[s:e].T)
            if l < self.layout.num_levels - 1:
                h = h + self.emb[self.layout.offsets[l] + codes[:, l]]
        return out

    def code_embeddings(self, level):
        s, e = self.layout.digit_token_range(level)
        return self.emb[s:e]


def interrupt_on_call(fn, n):
    """fn, except that its n-th call raises KeyboardInterrupt (a simulated Ctrl-C)."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    return wrapper


def assert_sequences_decode_to_ranked_items(out, layout, catalog, start):
    """An HF-style GenerateOutput (AcceleratedRecommender.generate / sk.constrained_generate with
    return_dict_in_generate=True): each returned sequence, its L digit tokens from position `start` read
    back through the layout and the catalog, names the ranked items at its rank (every item of a shared
    SID, as catalog.expand lists them); the ranked scores and the sequences' scores do not increase within
    a user and are the same scores (one positive factor: HF's new_tokens ** length_penalty); every item
    is a distinct catalog item."""
    batch = out.items.shape[0]
    n = out.sequences.shape[0] // batch
    assert out.sequences.shape[0] == batch * n and out.sequences.dtype == torch.long
    codes = layout.tokens_to_codes(out.sequences[:, start : start + layout.num_levels])
    seq_scores = out.sequences_scores if out.sequences_scores is not None else torch.zeros(batch * n)
    decoded = catalog.expand(GenerationOutput(items=catalog.lookup(codes).view(batch, n),
                                              codes=codes.view(batch, n, -1), scores=seq_scores.view(batch, n)))
    assert torch.equal(decoded.items, out.items)
    assert torch.equal(decoded.codes, out.codes)
    assert bool((out.scores[:, :-1] >= out.scores[:, 1:]).all())
    if out.sequences_scores is not None:
        assert bool((out.sequences_scores.view(batch, n).diff(dim=1) <= 0).all())
        ratio = out.scores / decoded.scores
        assert bool((ratio > 0).all())
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.flatten()[0])))
    assert bool((out.items >= 0).all())
    assert set(out.items.flatten().tolist()) <= set(catalog.all_item_ids.tolist())
    for row in out.items.tolist():
        assert len(set(row)) == len(row)
