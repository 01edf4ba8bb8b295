"""Beam decoding of a causal LM (LLaMA, Qwen2, Qwen3, GPT-2) with one prompt KV cache per user.

HF `generate(num_beams=W)` copies every prompt W times before its prefill, so the prompt's
KV cache (and its prefill compute) is W times a user's. `SharedPromptDecoder` runs the model's
own forward once per user over the left-padded prompt, keeps that cache (B, H_kv, T, d) as it
is, and decodes the beams' new tokens with the model's own modules (norms, projections, MLP,
rotary table): each beam's query attends to its user's prompt keys through a broadcast matmul
(never copied per beam, never reordered) and to its own few new keys (B, W, H_kv, t, d), the
only per-beam cache, reordered by parent beam each step (t <= L + the answer suffix).

Softmax over [prompt keys, new keys] in float32, scaled by the module's own `scaling`; grouped
query heads share their KV head as HF's `repeat_kv` pairs them (query head h reads KV head
h // G). GPT-2 blocks (learned positions, fused c_attn, no rotation) take the same path. Tested
against HF generate (teacher/exact_generate.py's oracle) on tiny random LLaMA and Qwen2 models,
and against HF's own beam search and an uncached reference on GPT-2 (tests/teacher/test_attention_decode.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..data.layout import TokenLayout
from ..errors import InvalidInput
from .adapters import CausalOutputHeads, causal_prompt, left_positions, output_cache

__all__ = ["SHARED_PROMPT_MODEL_TYPES", "SharedPromptDecoder", "SharedPromptStepper", "uses_shared_prompt"]

# Decoder layers of the form x + attn(norm(x)), x + mlp(norm(x)): rotary q/k (q_norm/k_norm: Qwen3), or
# GPT-2's learned positions and fused q/k/v projection.
SHARED_PROMPT_MODEL_TYPES = ("llama", "qwen2", "qwen3", "gpt2")


def uses_shared_prompt(model: nn.Module) -> bool:
    """Whether `model` decodes with SharedPromptDecoder (a LLaMA-family model without a sliding window, GPT-2)."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in SHARED_PROMPT_MODEL_TYPES:
        return False
    if cfg.model_type == "gpt2":
        return not getattr(cfg, "add_cross_attention", False)
    if getattr(cfg, "use_sliding_window", False):
        raise InvalidInput("this model uses a sliding attention window, which SharedPromptDecoder does not "
                           "implement (config.use_sliding_window=True)")
    return True


def _layer_kv(cache, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) (B, H_kv, T, d) of one layer of an HF cache, whatever transformers version made it."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[index].keys, layers[index].values
    return cache.key_cache[index], cache.value_cache[index]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, W, H, d) at per-beam angles cos/sin (B, W, d) (the half-split convention)."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(2) + turned * sin.unsqueeze(2)


class SharedPromptDecoder:
    """Prefill once per user, then feed (B, W) beam tokens step by step (see the module docstring)."""

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.base = model.base_model
        self.gpt2 = model.config.model_type == "gpt2"
        mask = attention_mask.long()
        out = self.base(input_ids=input_ids, attention_mask=mask, position_ids=left_positions(mask), use_cache=True)
        cache = output_cache(out)
        self.layers = list(self.base.h if self.gpt2 else self.base.layers)
        kv = [_layer_kv(cache, i) for i in range(len(self.layers))]
        self.prompt_k = [k for k, _ in kv]
        self.prompt_v = [v for _, v in kv]
        dtype = self.prompt_k[0].dtype
        # (B, 1, 1, 1, T): pads of the left-padded prompt take no attention.
        self.prompt_bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
            mask == 0, float("-inf"))[:, None, None, None, :]
        self.new_k: list[Optional[torch.Tensor]] = [None] * len(self.layers)
        self.new_v: list[Optional[torch.Tensor]] = [None] * len(self.layers)
        self.last_position = left_positions(mask)[:, -1]  # (B,)
        self.steps = 0
        self.first = out.last_hidden_state[:, -1:]  # (B, 1, D): the prompt's last hidden state
        self.dtype = dtype

    def reorder(self, parents: torch.Tensor) -> None:
        """Keep, for each new beam (B, W'), its parent beam's new-token cache (the prompt cache is shared)."""
        rows = torch.arange(parents.shape[0], device=parents.device).unsqueeze(1)
        for i in range(len(self.layers)):
            if self.new_k[i] is not None:
                self.new_k[i] = self.new_k[i][rows, parents]
                self.new_v[i] = self.new_v[i][rows, parents]

    def _attend(self, i: int, q: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of beam queries (B, W, H_q, d) over the user's prompt and the beam's new tokens -> (B, W, H_q*d)."""
        b, w, hq, d = q.shape
        kp, vp = self.prompt_k[i], self.prompt_v[i]  # (B, H_kv, T, d)
        hkv, t = kp.shape[1], kp.shape[2]
        g = hq // hkv
        qg = q.view(b, w, hkv, g, d)
        # Prompt keys: one matmul per (user, KV head) over all its beams and grouped heads.
        qp = qg.permute(0, 2, 1, 3, 4).reshape(b, hkv, w * g, d)
        sp = (qp @ kp.transpose(-1, -2)).view(b, hkv, w, g, t).float() * scaling + self.prompt_bias
        kn, vn = self.new_k[i], self.new_v[i]  # (B, W, H_kv, t_new, d)
        sn = torch.einsum("bwkgd,bwktd->bkwgt", qg, kn).float() * scaling
        probs = torch.softmax(torch.cat([sp, sn], dim=-1), dim=-1).to(q.dtype)
        pp, pn = probs[..., :t], probs[..., t:]
        out = (pp.reshape(b, hkv, w * g, t) @ vp).view(b, hkv, w, g, d)
        out = out + torch.einsum("bkwgt,bwktd->bkwgd", pn, vn)
        return out.permute(0, 2, 1, 3, 4).reshape(b, w, hq * d)

    def _append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add this step's keys and values (B, W, H_kv, d) to layer i's per-beam cache."""
        k, v = k.unsqueeze(3), v.unsqueeze(3)  # (B, W, H_kv, 1, d)
        if self.new_k[i] is None:
            self.new_k[i], self.new_v[i] = k, v
        else:
            self.new_k[i] = torch.cat([self.new_k[i], k], dim=3)
            self.new_v[i] = torch.cat([self.new_v[i], v], dim=3)

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per beam (B, W); return the (B, W, D) last hidden states (after the final norm)."""
        self.steps += 1
        b, w = tokens.shape
        positions = (self.last_position + self.steps).unsqueeze(1).expand(b, w)
        if self.gpt2:
            return self._feed_gpt2(tokens, positions)
        x = self.base.embed_tokens(tokens)
        cos, sin = self.base.rotary_emb(x, positions)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            d = attn.head_dim
            q = attn.q_proj(h).view(b, w, -1, d)
            k = attn.k_proj(h).view(b, w, -1, d)
            v = attn.v_proj(h).view(b, w, -1, d)
            if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self._append(i, k, v)
            x = x + attn.o_proj(self._attend(i, q, float(attn.scaling)))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.base.norm(x)

    def _feed_gpt2(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """GPT-2 blocks: learned position embeddings, q/k/v from one c_attn, x + attn(ln_1 x), x + mlp(ln_2 x)."""
        b, w = tokens.shape
        x = self.base.wte(tokens) + self.base.wpe(positions)
        for i, block in enumerate(self.layers):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(x)).split(attn.split_size, dim=-1)
            d = attn.head_dim
            q, k, v = q.view(b, w, -1, d), k.view(b, w, -1, d), v.view(b, w, -1, d)
            self._append(i, k, v)
            x = x + attn.c_proj(self._attend(i, q, float(attn.scaling)))
            x = x + block.mlp(block.ln_2(x))
        return self.base.ln_f(x)


class SharedPromptStepper(CausalOutputHeads):
    """attention_decode's stepper interface (hidden, digit_logits, vocab_logits, feed) on a SharedPromptDecoder."""

    def __init__(self, model: nn.Module, layout: TokenLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        ids, mask = causal_prompt(model, layout, input_ids, attention_mask)
        self.dec = SharedPromptDecoder(model, ids, mask)
        self.layout = layout
        super().__init__(model, layout)
        self.device = ids.device

    def hidden(self, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, W, D) last hidden state after feeding each beam's digit level-1 (level 0: the prompt's)."""
        if level == 0:
            return self.dec.first
        self.dec.reorder(parents.to(self.device))
        return self.dec.feed(self.layout.digit_tokens(level - 1, prefixes[:, :, -1].to(self.device)))

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, W, D) hidden states after feeding one fixed token per beam (the answer suffix)."""
        return self.dec.feed(tokens.to(self.device))
