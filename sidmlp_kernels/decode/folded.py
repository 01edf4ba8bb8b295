"""Folded SID-MLP heads (docs/architecture.md, "Fast paths"): the first Linear split per input block.

Head l's first layer acts on [ctx, e(d_1), ..., e(d_{l-1})]. Splitting its weight
per block turns it into ctx @ W_ctx^T + b (once per user) plus, per beam row, a
sum of rows gathered from precomputed (K_j, H) tables E_j @ W_{l,j}^T. Only
LayerNorm, GELU (exact, erf form) and the H -> K_l GEMM remain per beam row.

These tensors are the contract with the fused Triton step and the C++ ops: keep
field names and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ..errors import InvalidInput


__all__ = [
    "FoldedHeads",
    "fold_student",
    "project_context",
    "folded_logits",
]


@dataclass
class FoldedHeads:
    """Per-head tensors of the folded first layer plus the rest of each head."""

    ctx_weight: list[torch.Tensor]  # per head l: (H, C), first-layer block acting on ctx
    ctx_bias: list[torch.Tensor]  # per head l: (H,)
    prefix_tables: list[list[torch.Tensor]]  # [l][j] = E_j @ W_{l,j}^T : (K_j, H) for j < l
    ln_weight: list[torch.Tensor]  # per head l: (H,)
    ln_bias: list[torch.Tensor]  # per head l: (H,)
    ln_eps: float
    out_weight: list[torch.Tensor]  # per head l: (K_l, H)
    out_bias: list[torch.Tensor]  # per head l: (K_l,)

    @property
    def num_levels(self) -> int:
        """Number of heads (SID digits L)."""
        return len(self.out_weight)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """K_l of each head."""
        return tuple(int(w.shape[0]) for w in self.out_weight)

    def to(self, *args, **kwargs) -> "FoldedHeads":
        """A copy with every tensor moved/cast like Tensor.to."""
        return self.apply(lambda t: t.to(*args, **kwargs))

    def apply(self, fn) -> "FoldedHeads":
        """A copy with `fn` applied to every tensor (what nn.Module._apply does to parameters)."""
        m = lambda ts: [fn(t) for t in ts]  # noqa: E731
        return FoldedHeads(
            ctx_weight=m(self.ctx_weight),
            ctx_bias=m(self.ctx_bias),
            prefix_tables=[m(row) for row in self.prefix_tables],
            ln_weight=m(self.ln_weight),
            ln_bias=m(self.ln_bias),
            ln_eps=self.ln_eps,
            out_weight=m(self.out_weight),
            out_bias=m(self.out_bias),
        )

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor dict (for safetensors); ln_eps is not a tensor and is kept apart."""
        out: dict[str, torch.Tensor] = {}
        for l in range(self.num_levels):
            out[f"head{l}.ctx_weight"] = self.ctx_weight[l]
            out[f"head{l}.ctx_bias"] = self.ctx_bias[l]
            out[f"head{l}.ln_weight"] = self.ln_weight[l]
            out[f"head{l}.ln_bias"] = self.ln_bias[l]
            out[f"head{l}.out_weight"] = self.out_weight[l]
            out[f"head{l}.out_bias"] = self.out_bias[l]
            for j, table in enumerate(self.prefix_tables[l]):
                out[f"head{l}.prefix_table{j}"] = table
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], num_levels: int, ln_eps: float) -> "FoldedHeads":
        """Inverse of to_tensors."""
        g = lambda name: [tensors[f"head{l}.{name}"] for l in range(num_levels)]  # noqa: E731
        return cls(
            ctx_weight=g("ctx_weight"),
            ctx_bias=g("ctx_bias"),
            prefix_tables=[[tensors[f"head{l}.prefix_table{j}"] for j in range(l)] for l in range(num_levels)],
            ln_weight=g("ln_weight"),
            ln_bias=g("ln_bias"),
            ln_eps=float(ln_eps),
            out_weight=g("out_weight"),
            out_bias=g("out_bias"),
        )


@torch.no_grad()
def fold_student(student) -> FoldedHeads:
    """Fold a trained SIDMLP's heads; the result is detached and contiguous."""
    cfg = student.config
    c = cfg.context_width
    fh = FoldedHeads([], [], [], [], [], 0.0, [], [])
    eps = None
    for level, head in enumerate(student.heads):
        first, ln, out = head[0], head[1], head[4]
        w = first.weight.detach()
        fh.ctx_weight.append(w[:, :c].contiguous().clone())
        fh.ctx_bias.append(first.bias.detach().clone())
        tables, start = [], c
        for j in range(level):
            dim = cfg.embed_dims[j]
            # (K_j, D_j) @ (D_j, H): each code's contribution to the hidden pre-activation.
            tables.append((student.code_embedding(j) @ w[:, start : start + dim].T).contiguous())
            start += dim
        fh.prefix_tables.append(tables)
        fh.ln_weight.append(ln.weight.detach().clone())
        fh.ln_bias.append(ln.bias.detach().clone())
        if eps is not None and ln.eps != eps:
            raise InvalidInput("all heads must share one LayerNorm eps to fold")
        eps = ln.eps
        fh.out_weight.append(out.weight.detach().clone())
        fh.out_bias.append(out.bias.detach().clone())
    fh.ln_eps = float(eps)
    return fh


def project_context(folded: FoldedHeads, ctx: torch.Tensor) -> list[torch.Tensor]:
    """ctx (B, C) -> per head l the (B, H) first-layer contribution of ctx (incl. bias); once per user."""
    return [F.linear(ctx, w, b) for w, b in zip(folded.ctx_weight, folded.ctx_bias)]


def folded_logits(
    folded: FoldedHeads, level: int, ctx_proj_l: torch.Tensor, prefixes: torch.Tensor
) -> torch.Tensor:
    """Reference of one digit's folded head: gather-and-add, LayerNorm, GELU, out GEMM -> (B, W, K_l).

    ctx_proj_l (B, H) is head `level`'s projected context; prefixes (B, W, level) codes.
    """
    b, w = prefixes.shape[:2]
    if prefixes.dim() != 3 or prefixes.shape[2] != level:
        raise InvalidInput(f"prefixes must be (B, W, {level}), got {tuple(prefixes.shape)}")
    if ctx_proj_l.shape[0] != b:
        raise InvalidInput(f"ctx_proj_l has {ctx_proj_l.shape[0]} rows, prefixes {b}")
    # Broadcast the per-user row over beams: no per-beam copy of the context.
    hidden = ctx_proj_l.unsqueeze(1)
    for j, table in enumerate(folded.prefix_tables[level]):
        hidden = hidden + table[prefixes[:, :, j]]
    hidden = hidden.expand(b, w, hidden.shape[-1])
    hidden = F.layer_norm(hidden, hidden.shape[-1:], folded.ln_weight[level], folded.ln_bias[level], folded.ln_eps)
    hidden = F.gelu(hidden)
    return F.linear(hidden, folded.out_weight[level], folded.out_bias[level])
