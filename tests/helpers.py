"""Shared test doubles."""

import torch

from sidmlp_kernels.decode.types import Encoded
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
