"""Fast inference path for a HuggingFace T5 encoder (the TIGER teacher's encoder).

SID-MLP keeps the teacher's encoder, so the encoder bounds its end-to-end latency
(docs/architecture.md, "Measuring speed"). ``FastT5Encoder`` computes what
``model.get_encoder()(input_ids, attention_mask).last_hidden_state`` computes
(fp32, differences ~1e-6) with less work per call:

- Q, K and V come from one GEMM on a fused (3*H*d_kv, D) weight.
- Each T5LayerNorm gain is folded into the input columns of the projection that
  follows it, so a norm is a bare ``x * rsqrt(mean(x^2) + eps)``.
- Layer 0's norm + QKV projection depend on the token id alone, so for small
  vocabularies (TIGER: ~1k tokens) they are a precomputed (V, 3*H*d_kv) table and
  the first GEMM becomes a row gather.
- Residual adds and the FF activation ride inside the GEMMs: oneDNN linear with a
  fused epilogue on prepacked weights where PyTorch ships oneDNN (``backend="mkldnn"``,
  chosen automatically on CPU), else ``addmm`` with beta=1 (``backend="mm"``).
- The relative-position bias is a (1, H, T, T) table cached per sequence length,
  combined with the padding mask into one additive float mask once per call and
  shared by all layers (T5 computes the bias once, in layer 0, too).
- Attention is one ``scaled_dot_product_attention`` call per layer for all heads
  (scale=1: T5 does not scale its scores), reading Q/K/V as strided views.
- Large batches can run as sub-batches of at most ``max_rows`` tokens so each
  layer's activations stay cache resident (exact: rows are independent). Auto
  (None) splits at 4096 tokens in single-threaded runs only; see ``forward``.

The fp32 GEMMs (~75% of the time) already run near the core's FMA peak (~90 GFLOP/s
per core measured on the 2-core EPYC), so what is left to win is overhead (small
batches), padding and cache traffic (large batches). torch.compile (inductor, with
and without freezing) measured no faster than this eager path, so the module has no
compile path; ``bench/bench_encoder.py --compile`` re-measures it.

``skip_padding=True`` trades exactness at padded positions for speed: all-padding
columns are trimmed (relative positions are shift invariant, so real tokens see the
same bias), every per-token op runs on real tokens only, and padded positions of the
output are zeros. Real-token outputs are unchanged, so consumers that pool under the
mask (the SID-MLP student) see the same values.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from ..errors import InvalidInput

__all__ = ["FastT5Encoder", "relative_position_bucket", "mkldnn_linear_available"]

# Largest layer-0 QKV lookup table (elements) worth precomputing: TIGER's is
# 1027 x 1152 (4.7 MB); a 32k-token T5 vocabulary would not pay for itself.
_MAX_TABLE_ELEMS = 1 << 23
# Tokens per sub-batch when max_rows is auto and the run is single-threaded (see forward).
_AUTO_MAX_ROWS = 4096


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """T5's bucket of each (memory - query) offset; the same arithmetic as HF, so buckets match exactly."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # Float log then truncation, exactly as HF does it, so boundary offsets land in the same bucket.
    if_large = max_exact + (
        torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, if_large)


_MKLDNN_OK: Optional[bool] = None


def mkldnn_linear_available() -> bool:
    """Whether this PyTorch build runs oneDNN linear with fused epilogues correctly (checked once)."""
    global _MKLDNN_OK
    if _MKLDNN_OK is None:
        try:
            ops = torch.ops.mkldnn
            x = torch.randn(5, 8)
            w = torch.randn(6, 8)
            r = torch.randn(5, 6)
            pw = ops._reorder_linear_weight(w, None)
            ref = x @ w.t()
            ok = torch.allclose(ops._linear_pointwise(x, pw, None, "relu", [], ""), ref.relu(), atol=1e-5)
            ok &= torch.allclose(ops._linear_pointwise.binary(x, r, pw, None, "add"), ref + r, atol=1e-5)
            ok &= torch.allclose(ops._linear_pointwise.binary(x, r, pw, None, "mul"), ref * r, atol=1e-5)
            _MKLDNN_OK = bool(ok and torch.backends.mkldnn.is_available())
        except Exception:  # op missing in this build (no oneDNN) or refused: use the mm path
            _MKLDNN_OK = False
    return _MKLDNN_OK


# HF activation name -> (oneDNN epilogue attr, algorithm, eager function). A None attr
# means the activation runs as its own op after the GEMM.
_ACTS: dict[str, tuple[Optional[str], str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "relu": ("relu", "", torch.relu),
    # HF's tanh-approximated GELUs; the fused kernels agree with NewGELUActivation to ~5e-7.
    "gelu_new": ("gelu", "tanh", lambda x: F.gelu(x, approximate="tanh")),
    "gelu_pytorch_tanh": ("gelu", "tanh", lambda x: F.gelu(x, approximate="tanh")),
    "gelu_fast": ("gelu", "tanh", lambda x: F.gelu(x, approximate="tanh")),
    "gelu": ("gelu", "none", F.gelu),
    "silu": ("swish", "", F.silu),
    "swish": ("swish", "", F.silu),
}


def _own(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32, copy=True).contiguous()


class FastT5Encoder(nn.Module):
    """Inference-only T5 encoder equal to HF's (fp32), built for low CPU latency."""

    def __init__(
        self,
        embed: torch.Tensor,
        layers: list[dict[str, torch.Tensor]],
        final_norm: torch.Tensor,
        rel_bias: torch.Tensor,
        *,
        num_heads: int,
        d_kv: int,
        gated: bool,
        act_name: str,
        eps: float,
        num_buckets: int,
        max_distance: int,
        act_module: Optional[nn.Module] = None,
        skip_padding: bool = False,
        backend: str = "auto",
        table: Optional[bool] = None,
        max_rows: Optional[int] = None,
    ) -> None:
        super().__init__()
        # The environment variable forces a backend (docs/architecture.md, "Backends").
        backend = os.environ.get("SIDMLP_ENCODER_BACKEND", backend)
        if backend not in ("auto", "mkldnn", "mm"):
            raise InvalidInput(f"backend must be 'auto', 'mkldnn' or 'mm', got {backend!r}")
        if backend == "mkldnn" and not mkldnn_linear_available():
            raise InvalidInput("backend='mkldnn' asked for, but this PyTorch build has no working oneDNN linear")
        self.backend = backend
        self.num_heads = int(num_heads)
        self.d_kv = int(d_kv)
        self.gated = bool(gated)
        self.act_name = act_name
        self.eps = float(eps)
        self.num_buckets = int(num_buckets)
        self.max_distance = int(max_distance)
        self.skip_padding = bool(skip_padding)
        if max_rows is not None and (isinstance(max_rows, bool) or int(max_rows) < 0):
            raise InvalidInput(f"max_rows must be None (auto) or >= 0 (0 = never split the batch), got {max_rows}")
        self.max_rows = None if max_rows is None else int(max_rows)
        if act_name in _ACTS:
            self._act_attr, self._act_algo, self._act = _ACTS[act_name]
        elif act_module is not None:
            self._act_attr, self._act_algo, self._act = None, "", act_module
        else:
            raise InvalidInput(f"unsupported dense_act_fn {act_name!r}")
        # Copies, never views of the source model's weights: loading or editing one must not touch the other.
        self.register_buffer("embed", _own(embed))
        self.register_buffer("final_norm", _own(final_norm))
        self.register_buffer("rel_bias", _own(rel_bias))
        # nn.Linear layout (out, in); norm gains already folded into qkv / wi / wi_1.
        names = ("qkv", "o", "wi", "wi_1", "wo") if self.gated else ("qkv", "o", "wi", "wo")
        self._names = names
        for li, p in enumerate(layers):
            for n in names:
                self.register_buffer(f"l{li}_{n}", _own(p[n]))
        self._num_layers = len(layers)
        inner = self.num_heads * self.d_kv
        if table is None:
            table = embed.shape[0] * 3 * inner <= _MAX_TABLE_ELEMS
        self.use_table = bool(table)
        self._bias_cache: dict[int, torch.Tensor] = {}
        self._packed: Optional[list[dict[str, torch.Tensor]]] = None
        self._table: Optional[torch.Tensor] = None
        self._cache_key: Optional[tuple] = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_hf(
        cls, model: nn.Module, *, skip_padding: bool = False, backend: str = "auto", max_rows: Optional[int] = None
    ) -> "FastT5Encoder":
        """Build from a HF T5ForConditionalGeneration / T5Model / T5EncoderModel (or its encoder stack)."""
        stack = model.get_encoder() if hasattr(model, "get_encoder") else model
        if not hasattr(stack, "block") or not hasattr(stack, "final_layer_norm") or not hasattr(stack, "config"):
            raise InvalidInput(f"model must be a HF T5 model or T5 encoder stack, got {type(model).__name__}")
        cfg = stack.config
        if getattr(cfg, "is_decoder", False):
            raise InvalidInput("model's stack is a decoder; pass the T5 model or its encoder")
        blocks = list(stack.block)
        if not blocks:
            raise InvalidInput("model's encoder has no layers")
        attn0 = blocks[0].layer[0].SelfAttention
        if not getattr(attn0, "has_relative_attention_bias", False):
            raise InvalidInput("layer 0 of the encoder carries no relative_attention_bias")

        def w(lin: nn.Linear) -> torch.Tensor:
            return lin.weight.detach().float()

        layers, act_module = [], None
        gated = bool(getattr(cfg, "is_gated_act", False))
        for blk in blocks:
            sa, ff = blk.layer[0], blk.layer[-1]
            att, dense = sa.SelfAttention, ff.DenseReluDense
            g1 = sa.layer_norm.weight.detach().float()
            g2 = ff.layer_norm.weight.detach().float()
            # (g * xn) @ W^T == xn @ (W * g)^T: fold each norm gain into the next weight's columns.
            p = {"qkv": torch.cat([w(att.q), w(att.k), w(att.v)], 0) * g1, "o": w(att.o), "wo": w(dense.wo)}
            if gated:
                p["wi"], p["wi_1"] = w(dense.wi_0) * g2, w(dense.wi_1) * g2
            else:
                p["wi"] = w(dense.wi) * g2
            act_module = dense.act
            layers.append(p)
        return cls(
            stack.embed_tokens.weight.detach().float(),
            layers,
            stack.final_layer_norm.weight.detach().float(),
            attn0.relative_attention_bias.weight.detach().float(),
            num_heads=cfg.num_heads,
            d_kv=cfg.d_kv,
            gated=gated,
            act_name=cfg.dense_act_fn,
            eps=cfg.layer_norm_epsilon,
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
            act_module=act_module,
            skip_padding=skip_padding,
            backend=backend,
            max_rows=max_rows,
        ).eval()

    # ------------------------------------------------------------------ properties
    @property
    def d_model(self) -> int:
        """Width D of the encoder states."""
        return self.embed.shape[1]

    @property
    def vocab_size(self) -> int:
        """Number of token ids the embedding table covers."""
        return self.embed.shape[0]

    @property
    def num_layers(self) -> int:
        """Number of encoder blocks."""
        return self._num_layers

    @property
    def resolved_backend(self) -> str:
        """GEMM backend a CPU forward uses: 'mkldnn' (oneDNN, fused epilogues) or 'mm'."""
        if self.embed.device.type != "cpu" or self.embed.dtype != torch.float32:
            return "mm"  # oneDNN packing here is fp32 CPU only
        if self.backend == "auto":
            return "mkldnn" if mkldnn_linear_available() else "mm"
        return self.backend

    def _w(self, li: int, name: str) -> torch.Tensor:
        return getattr(self, f"l{li}_{name}")

    # ------------------------------------------------------------------ caches
    def _state_key(self) -> tuple:
        # Storage and version counter of every weight: a move, cast, load_state_dict or
        # in-place edit changes it, and the derived tensors below are rebuilt.
        return tuple((b.data_ptr(), b._version, b.dtype, b.device) for b in self.buffers())

    def _fresh_caches(self) -> None:
        key = self._state_key()
        if key != self._cache_key:
            self._bias_cache, self._packed, self._table, self._cache_key = {}, None, None, key

    def __getstate__(self) -> dict:
        # oneDNN-packed weights are opaque tensors that cannot be pickled or deep-copied.
        state = self.__dict__.copy()
        state["_packed"], state["_table"], state["_bias_cache"], state["_cache_key"] = None, None, {}, None
        return state

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        # T5LayerNorm without its gain (folded into the next projection); fp32 variance as HF.
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def _packed_weights(self) -> list[dict[str, torch.Tensor]]:
        if self._packed is None:
            reorder = torch.ops.mkldnn._reorder_linear_weight
            self._packed = [{n: reorder(self._w(li, n), None) for n in self._names} for li in range(self._num_layers)]
        return self._packed

    def qkv_table(self) -> torch.Tensor:
        """(V, 3*H*d_kv) layer-0 Q|K|V of every token id: norm + projection precomputed once."""
        self._fresh_caches()
        return self._qkv_table()

    def position_bias(self, seq_len: int) -> torch.Tensor:
        """(1, H, T, T) relative-position bias for length T, cached per T."""
        self._fresh_caches()
        return self._position_bias(seq_len)

    def _qkv_table(self) -> torch.Tensor:
        if self._table is None:
            self._table = torch.mm(self._rms(self.embed), self._w(0, "qkv").t()).contiguous()
        return self._table

    def _position_bias(self, seq_len: int) -> torch.Tensor:
        bias = self._bias_cache.get(seq_len)
        if bias is None:
            pos = torch.arange(seq_len, dtype=torch.long, device=self.rel_bias.device)
            bucket = relative_position_bucket(pos[None, :] - pos[:, None], True, self.num_buckets, self.max_distance)
            bias = F.embedding(bucket, self.rel_bias).permute(2, 0, 1).unsqueeze(0).contiguous()
            if len(self._bias_cache) >= 64:  # bounded; histories come in few lengths
                self._bias_cache.clear()
            self._bias_cache[seq_len] = bias
        return bias

    # ------------------------------------------------------------------ input checks
    def _check(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise InvalidInput(f"input_ids must be a (B, T) integer tensor, got {got}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
            raise InvalidInput(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise InvalidInput(f"input_ids must be (B, T) with B >= 1 and T >= 1, got {tuple(input_ids.shape)}")
        if input_ids.device != self.embed.device:
            raise InvalidInput(f"input_ids is on {input_ids.device}, the encoder's weights on {self.embed.device}")
        lo, hi = torch.aminmax(input_ids)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= self.vocab_size:
            raise InvalidInput(f"input_ids must lie in [0, {self.vocab_size}) (vocab_size), got values in [{lo}, {hi}]")
        if attention_mask is None:
            return
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise InvalidInput(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {got}")
        if attention_mask.device != input_ids.device:
            raise InvalidInput(f"attention_mask is on {attention_mask.device}, input_ids on {input_ids.device}")
        if attention_mask.dtype != torch.bool:
            if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
                raise InvalidInput("attention_mask must hold only 0 (padding) and 1 (real token)")

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoder states (B, T, D) for token ids (B, T) and mask (B, T), 1 = real token."""
        self._check(input_ids, attention_mask)
        self._fresh_caches()
        bsz, seq = input_ids.shape
        keep = None
        if attention_mask is not None:
            keep = attention_mask.to(torch.bool)
            if bool(keep.all()):
                keep = None  # no padding: the bias alone is the mask, no (B, H, T, T) tensor needed
            elif not bool(keep.any(1).all()):
                bad = int((~keep.any(1)).nonzero()[0, 0])
                raise InvalidInput(f"attention_mask row {bad} has no real token (empty history)")
        max_rows = self.max_rows
        if max_rows is None:
            # Measured on a shared 2-core EPYC: at 1 thread, 4096-token sub-batches cut B=128
            # by ~25% (cache residency); at 2 threads the extra parallel regions cost more than
            # that, so auto splits only single-threaded runs.
            max_rows = _AUTO_MAX_ROWS if torch.get_num_threads() == 1 else 0
        chunks = -(-bsz * seq // max_rows) if max_rows else 1
        if chunks <= 1 or bsz == 1:
            return self._forward_rows(input_ids, keep)
        # Sub-batches of <= max_rows tokens keep each layer's activations (the (N, d_ff) FF
        # hidden, the (N, 3*H*d_kv) QKV) cache resident; rows are independent, so this is exact.
        step = -(-bsz // min(chunks, bsz))
        out = torch.empty(bsz, seq, self.d_model, dtype=self.embed.dtype, device=self.embed.device)
        for s in range(0, bsz, step):
            part = None if keep is None else keep[s : s + step]
            if part is not None and bool(part.all()):
                part = None
            out[s : s + step] = self._forward_rows(input_ids[s : s + step], part)
        return out

    def _forward_rows(self, input_ids: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, T, D) states of one (sub-)batch; ``keep`` is None when it has no padding."""
        bsz, seq = input_ids.shape
        if keep is None or not self.skip_padding:
            return self._encode(input_ids, keep).view(bsz, seq, -1)
        # Trim columns that are padding in every row (shift invariance keeps real tokens exact),
        # then run per-token work on real tokens only.
        cols = keep.any(0).nonzero().squeeze(1)
        lo, hi = int(cols[0]), int(cols[-1]) + 1
        ids_c, keep_c = input_ids[:, lo:hi], keep[:, lo:hi]
        if bool(keep_c.all()):  # equal-length rows: trimming removed all padding
            x, idx = self._encode(ids_c, None), None
        else:
            idx = keep_c.reshape(-1).nonzero().squeeze(1)
            x = self._encode(ids_c, keep_c, idx)
        if idx is None:
            sub = x.view(bsz, hi - lo, -1)
        else:
            sub = x.new_zeros(bsz * (hi - lo), x.shape[-1]).index_copy_(0, idx, x).view(bsz, hi - lo, -1)
        if hi - lo == seq:
            return sub
        out = x.new_zeros(bsz, seq, x.shape[-1])
        out[:, lo:hi] = sub
        return out

    def _encode(self, input_ids: torch.Tensor, keep: Optional[torch.Tensor], idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows (N, D) of final states: all B*T positions, or only rows ``idx`` of the flattened batch."""
        bsz, seq = input_ids.shape
        h, dk = self.num_heads, self.d_kv
        inner = h * dk
        bias = self._position_bias(seq)
        if keep is None:
            mask = bias
        else:
            # HF's sdpa construction: the bias where attended, finfo.min where the key is padding.
            mask = torch.where(keep[:, None, None, :], bias, torch.finfo(bias.dtype).min)
        flat_ids = input_ids.reshape(-1)
        if idx is not None:
            flat_ids = flat_ids.index_select(0, idx)
        x = F.embedding(flat_ids, self.embed)
        mk = self.resolved_backend == "mkldnn"
        if mk:
            packed = self._packed_weights()
            lin = torch.ops.mkldnn._linear_pointwise
        for li in range(self._num_layers):
            if li == 0 and self.use_table:
                qkv = F.embedding(flat_ids, self._qkv_table())
            elif mk:
                qkv = lin(self._rms(x), packed[li]["qkv"], None, "none", [], "")
            else:
                qkv = torch.mm(self._rms(x), self._w(li, "qkv").t())
            if idx is not None:
                qkv = qkv.new_zeros(bsz * seq, 3 * inner).index_copy_(0, idx, qkv)
            qkv = qkv.view(bsz, seq, 3, h, dk).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask, scale=1.0)
            att = att.transpose(1, 2).reshape(bsz * seq, inner)
            if idx is not None:
                att = att.index_select(0, idx)
            if mk:
                x = self._block_tail_mkldnn(lin, packed[li], att, x)
            else:
                x = self._block_tail_mm(li, att, x)
        return self._rms(x) * self.final_norm

    def _block_tail_mkldnn(self, lin, p: dict[str, torch.Tensor], att: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Output projection + residual, then the FF sublayer + residual, on oneDNN-packed weights.
        x = lin.binary(att, x, p["o"], None, "add")  # residual fused into the GEMM epilogue
        hn = self._rms(x)
        if self._act_attr is not None:
            f = lin(hn, p["wi"], None, self._act_attr, [], self._act_algo)
        else:
            f = self._act(lin(hn, p["wi"], None, "none", [], ""))
        if self.gated:
            f = lin.binary(hn, f, p["wi_1"], None, "mul")  # act(hn W0) * (hn W1), product fused
        return lin.binary(f, x, p["wo"], None, "add")

    def _block_tail_mm(self, li: int, att: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Same as _block_tail_mkldnn with plain (add)mm; runs on any device and dtype.
        x = torch.addmm(x, att, self._w(li, "o").t())
        hn = self._rms(x)
        f = torch.mm(hn, self._w(li, "wi").t())
        if self.act_name == "relu":
            f = f.relu_()
        else:
            f = self._act(f)
        if self.gated:
            f = f.mul_(torch.mm(hn, self._w(li, "wi_1").t()))
        return torch.addmm(x, f, self._w(li, "wo").t())
