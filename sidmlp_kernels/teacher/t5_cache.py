"""A T5 decoder stack stepped over beams: cross-attention K/V once per user, a self-attention KV cache.

`T5StackCache(stack, enc_states, enc_mask)` runs a HF `T5Stack` (is_decoder) one position at a time
for (B, W) beams fed embeddings: every layer's cross-attention K/V is computed once per user and
shared by its beams through a broadcasted batched matmul (never copied per beam), and each beam's
self-attention keys/values are cached and reordered by its parent beam. It uses the stack's own
modules (layer norms, projections, relative-position bias, feed-forward block, whatever that block
is: T5's or GRID's MultiLayerFF), in eval semantics (no dropout), and returns the stack's output
after its final layer norm. Its users: attention_decode.T5CachedDecoder (HF T5 teachers: token
embeddings in, lm_head rows out) and digit_heads.DigitHeadsT5 (BOS / SID embeddings in, per-digit heads out).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["T5StackCache"]


class T5StackCache:
    """Step-by-step T5 decoder stack over (B, W) beams (module docstring)."""

    def __init__(self, stack: nn.Module, enc_states: torch.Tensor, enc_mask: torch.Tensor):
        cfg = stack.config
        self.stack = stack
        self.blocks = list(stack.block)
        self.num_heads = int(cfg.num_heads)
        self.d_kv = int(cfg.d_kv)
        self.batch, t = enc_mask.shape
        b, h, d = self.batch, self.num_heads, self.d_kv
        self.cross_k, self.cross_v = [], []
        for block in self.blocks:
            att = block.layer[1].EncDecAttention
            self.cross_k.append(att.k(enc_states).view(b, t, h, d).transpose(1, 2))  # (B, H, T, d)
            self.cross_v.append(att.v(enc_states).view(b, t, h, d).transpose(1, 2))
        neg = torch.finfo(enc_states.dtype).min
        self.cross_bias = torch.zeros(b, 1, 1, t, dtype=enc_states.dtype, device=enc_states.device)
        self.cross_bias.masked_fill_(~enc_mask.bool().view(b, 1, 1, t), neg)
        self.self_k: list[Optional[torch.Tensor]] = [None] * len(self.blocks)
        self.self_v: list[Optional[torch.Tensor]] = [None] * len(self.blocks)
        self.steps = 0

    def _self_bias(self, length: int, device: torch.device) -> torch.Tensor:
        """(H, length) relative-position bias of the newest query over all cached keys."""
        att = self.blocks[0].layer[0].SelfAttention
        rel = torch.arange(length, device=device) - (length - 1)  # memory - query <= 0
        bucket = att._relative_position_bucket(
            rel,
            bidirectional=False,
            num_buckets=att.relative_attention_num_buckets,
            max_distance=att.relative_attention_max_distance,
        )
        return att.relative_attention_bias(bucket).T  # (H, length)

    def reorder(self, parents: torch.Tensor) -> None:
        """Keep, for each new beam (B, W'), the cache of its parent beam."""
        rows = torch.arange(self.batch, device=parents.device).unsqueeze(1)
        for i in range(len(self.blocks)):
            self.self_k[i] = self.self_k[i][rows, parents]
            self.self_v[i] = self.self_v[i][rows, parents]

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Feed (B, W, D) input embeddings, one position per beam; return the (B, W, D) stack output."""
        b, w = hidden.shape[:2]
        h, d = self.num_heads, self.d_kv
        bias = self._self_bias(self.steps + 1, hidden.device).view(1, 1, h, -1)
        for i, block in enumerate(self.blocks):
            sa_layer, ca_layer = block.layer[0], block.layer[1]
            sa = sa_layer.SelfAttention
            x = sa_layer.layer_norm(hidden)
            q = sa.q(x).view(b, w, h, d)
            k_new = sa.k(x).view(b, w, h, 1, d)
            v_new = sa.v(x).view(b, w, h, 1, d)
            if self.self_k[i] is None:
                self.self_k[i], self.self_v[i] = k_new, v_new
            else:
                self.self_k[i] = torch.cat([self.self_k[i], k_new], dim=3)
                self.self_v[i] = torch.cat([self.self_v[i], v_new], dim=3)
            # T5 does not scale q.k; the relative bias carries the positions.
            scores = torch.einsum("bwhd,bwhtd->bwht", q, self.self_k[i]) + bias
            probs = torch.softmax(scores.float(), dim=-1).type_as(scores)
            attn = torch.einsum("bwht,bwhtd->bwhd", probs, self.self_v[i]).reshape(b, w, h * d)
            hidden = hidden + sa.o(attn)

            ca = ca_layer.EncDecAttention
            x = ca_layer.layer_norm(hidden)
            q = ca.q(x).view(b, w, h, d).transpose(1, 2)  # (B, H, W, d): all beams of a user in one matmul
            scores = q @ self.cross_k[i].transpose(-1, -2) + self.cross_bias
            probs = torch.softmax(scores.float(), dim=-1).type_as(scores)
            attn = (probs @ self.cross_v[i]).transpose(1, 2).reshape(b, w, h * d)
            hidden = hidden + ca.o(attn)

            hidden = block.layer[-1](hidden)
        self.steps += 1
        return self.stack.final_layer_norm(hidden)
