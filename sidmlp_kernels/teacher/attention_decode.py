"""Attention-decoder baselines: HF `generate` as TIGER code bases run it, and a cached beam search.

`hf_generate` is the baseline everyone ships: unconstrained beam search over the
full vocabulary, L+1 new tokens (L digits + EOS), beams whose tokens name no
catalog item dropped (and counted).

`attention_beam_search` runs the same weights the way a decoder should run:
the encoder and every layer's cross-attention K/V once per user (beams of a
user share them through a broadcasted batched matmul, never copied), a
self-attention KV cache reordered by the parent beam of each survivor, and
logits only over the current digit's K_l code tokens (rows of lm_head, never
the full vocabulary; with `renormalize=False` also the log-sum-exp of the whole vocabulary).
With `constrained=True` it is catalog-constrained through
`constrained_beam_search` (the C++ index on the model's device when the extension
runs there, else `beam_search_reference`; SIDMLP_BACKEND chooses), so it follows
docs/architecture.md, "Decoding semantics" exactly. Both modes run the one driver, decode.search.beam_search.

`renormalize=False` scores as HF generate with a catalog-trie `prefix_allowed_tokens_fn` does
(log-softmax over the whole vocabulary, then the mask; EOS's log-probability at step L+1 added
and the final beams re-ranked): what `sk.constrained_generate` runs (teacher/exact_generate.py).
A per-digit-head teacher (teacher/digit_heads.py) has no vocabulary head: there it is the log-softmax
over each digit's own head, then the mask, and no EOS, as cornac's own beam search scores.

Exact agreement with HF (a tested property): `attention_beam_search(...,
constrained=False)` returns the same beams, with the same scores up to float
error, as

    hf_generate(model, layout, catalog, ids, mask, beam, top_n,
                length_penalty=0.0,                 # scores = plain sums of log-probs
                renormalize_logits=True,            # log-softmax over the allowed tokens only
                prefix_allowed_tokens_fn=digit_allowed_tokens_fn(layout, prompt_len))

i.e. HF restricted at step l to digit l's code tokens (and to EOS at step L+1,
which then costs log 1 = 0). `early_stopping` does not matter there: no beam
can finish before the last step. Plain `hf_generate` normalises over the whole
vocabulary and may emit wrong-digit tokens; on a trained teacher that mass is
small, so it mostly agrees with the unconstrained search but not exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .adapters import (CausalOutputHeads, cache_kwarg, causal_prompt, check_model_layout, decoder_output_scale,
                       digit_rows, left_positions, output_cache)
from ..data.catalog import SIDCatalog
from ..decode.constrained import constrained_beam_search
from ..decode.final_token import FinalLogp
from ..decode.reference import ReferenceSteps, finalize_beams
from ..decode.search import beam_search
from ..decode.types import GenerationOutput, StepFn, check_beam_args
from ..data.layout import TokenLayout
from ..errors import InvalidInput, InvalidInputType
from .hf_output import SequenceFormat
from .llm_decode import SharedPromptStepper, uses_shared_prompt
from .t5_cache import T5StackCache

__all__ = [
    "DecodeOutput",
    "attention_beam_search",
    "digit_allowed_tokens_fn",
    "hf_generate",
    "rank_beams",
    "run_hf_generate",
    "T5CachedDecoder",
    "UnconstrainedSteps",
]


@dataclass
class DecodeOutput(GenerationOutput):
    """GenerationOutput plus what happened to the returned beams.

    num_invalid (B,): returned beams whose tokens name no catalog item (dropped).
    num_duplicate (B,): returned beams naming an item an earlier beam named (dropped).
    beam_codes (B, N, L) / beam_scores (B, N): the N returned beams as decoded, before
    dropping (-1 where a token is not a code of its digit).
    """

    num_invalid: torch.Tensor
    num_duplicate: torch.Tensor
    beam_codes: torch.Tensor
    beam_scores: torch.Tensor

    @property
    def total_invalid(self) -> int:
        """Invalid returned beams over the whole batch."""
        return int(self.num_invalid.sum())


def rank_beams(catalog: SIDCatalog, codes: torch.Tensor, scores: torch.Tensor, top_n: int) -> DecodeOutput:
    """Turn (B, N, L) decoded beams sorted by score into items: invalid and repeated beams dropped and counted."""
    batch, _, num_levels = codes.shape
    codes, scores = codes[:, :top_n].cpu(), scores[:, :top_n].float().cpu()
    width = codes.shape[1]
    items = catalog.lookup(codes.reshape(-1, num_levels)).reshape(batch, width)
    alive = torch.isfinite(scores)
    valid = alive & (items >= 0)
    same = items.unsqueeze(2) == items.unsqueeze(1)
    earlier = torch.tril(torch.ones(width, width, dtype=torch.bool), diagonal=-1)
    dup = valid & (same & earlier & valid.unsqueeze(1)).any(dim=2)
    ranked = finalize_beams(catalog, codes, scores, top_n, keep=valid & ~dup)
    return DecodeOutput(
        items=ranked.items,
        codes=ranked.codes,
        scores=ranked.scores,
        num_invalid=(alive & (items < 0)).sum(dim=1),
        num_duplicate=dup.sum(dim=1),
        beam_codes=codes,
        beam_scores=scores,
    )


def _check_decode_args(
    model: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    beam_size: int,
    top_n: int,
) -> None:
    check_beam_args(beam_size, top_n)
    check_model_layout(model, layout, catalog)
    own = hasattr(model, "beam_step_fn")  # a per-digit-head teacher (teacher/digit_heads.py) reads its layout's ids
    vocab = layout.vocab_size if own else model.get_input_embeddings().weight.shape[0]
    layout.check_inputs(input_ids, attention_mask, vocab_size=vocab)
    device = next(model.parameters()).device
    if input_ids.device != device:
        raise InvalidInput(f"input_ids are on {input_ids.device} but the model is on {device}")


def digit_allowed_tokens_fn(layout: TokenLayout, prompt_len: int) -> Callable[[int, torch.Tensor], list[int]]:
    """prefix_allowed_tokens_fn for HF generate: digit l's code tokens at new token l, then EOS."""
    allowed = [layout.digit_token_ids(level).tolist() for level in range(layout.num_levels)]
    eos = [layout.eos_id]

    def fn(batch_id: int, ids: torch.Tensor) -> list[int]:
        step = ids.shape[-1] - prompt_len
        return allowed[step] if step < layout.num_levels else eos

    return fn


@torch.no_grad()
def hf_generate(
    model: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    beam_size: int,
    top_n: int,
    *,
    max_new_tokens: Optional[int] = None,
    early_stopping: bool | str = True,
    length_penalty: float = 1.0,
    **generate_kwargs,
) -> DecodeOutput:
    """HF beam search as TIGER code bases run it (unconstrained, L+1 new tokens); invalid beams dropped and counted."""
    if not hasattr(model, "generate"):
        raise InvalidInput(f"hf_generate needs a HF model with generate(), got {type(model).__name__}; "
                           "use attention_beam_search")
    _check_decode_args(model, layout, catalog, input_ids, attention_mask, beam_size, top_n)
    out, start = run_hf_generate(model, layout, input_ids, attention_mask, beam_size, top_n,
                                 max_new_tokens=max_new_tokens, early_stopping=early_stopping,
                                 length_penalty=length_penalty, **generate_kwargs)
    num_levels = layout.num_levels
    new = out.sequences[:, start : start + num_levels]
    if new.shape[1] < num_levels:  # every beam ended (EOS) before L tokens: all invalid
        new = torch.cat([new, new.new_full((new.shape[0], num_levels - new.shape[1]), layout.pad_id)], dim=1)
    batch = input_ids.shape[0]
    codes = layout.tokens_to_codes(new.cpu()).reshape(batch, top_n, num_levels)
    if beam_size > 1:
        scores = out.sequences_scores.reshape(batch, top_n)
    else:
        scores = _greedy_scores(out.sequences[:, start:], out.scores, layout, length_penalty).reshape(batch, 1)
    return rank_beams(catalog, codes, scores, top_n)


@torch.no_grad()
def run_hf_generate(
    model: nn.Module,
    layout: TokenLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    beam_size: int,
    top_n: int,
    **generate_kwargs,
):
    """HF's own `model.generate` output (return_dict_in_generate, output_scores) as hf_generate calls it, and
    the index of the first new token in its sequences (1 for an encoder-decoder, the prompt length else).

    Inputs are in the encoder layout; a decoder-only model gets them as its prompt (adapters.causal_prompt).
    generate_kwargs: hf_generate's max_new_tokens (None: L digits + EOS where the teacher ends items
    with it), early_stopping (True), length_penalty (1.0), and any HF generate setting to override
    (e.g. prefix_allowed_tokens_fn).
    """
    max_new_tokens = generate_kwargs.pop("max_new_tokens", None)
    early_stopping = generate_kwargs.pop("early_stopping", True)
    length_penalty = generate_kwargs.pop("length_penalty", 1.0)
    num_levels = layout.num_levels
    # L digits + EOS; a full-sequence decoder-only teacher ends no item with EOS: its L digits are the item.
    max_new = SequenceFormat.of(model).new_tokens(layout) if max_new_tokens is None else int(max_new_tokens)
    if max_new < num_levels:
        raise InvalidInput(f"max_new_tokens must be >= L = {num_levels}, got {max_new}")
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    if not encoder_decoder:
        input_ids, attention_mask = causal_prompt(model, layout, input_ids, attention_mask)
    kwargs = dict(
        num_beams=beam_size,
        num_return_sequences=top_n,
        max_new_tokens=max_new,
        early_stopping=early_stopping,
        length_penalty=length_penalty,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=layout.pad_id,
        eos_token_id=layout.eos_id,
    )
    if beam_size == 1:  # HF runs greedy search, which takes neither flag
        del kwargs["early_stopping"], kwargs["length_penalty"]
    if encoder_decoder:
        kwargs["decoder_start_token_id"] = int(model.config.decoder_start_token_id)
    kwargs.update(generate_kwargs)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    finally:
        model.train(was_training)
    return out, 1 if encoder_decoder else input_ids.shape[1]


def _greedy_scores(new_tokens: torch.Tensor, step_scores, layout: TokenLayout, length_penalty: float) -> torch.Tensor:
    """Sequence scores of HF greedy search (num_beams=1 returns none): summed log-probs up to EOS, / len**penalty."""
    total = torch.zeros(new_tokens.shape[0])
    finished = torch.zeros(new_tokens.shape[0], dtype=torch.bool)
    length = torch.zeros(new_tokens.shape[0])
    for step, logits in enumerate(step_scores):
        tok = new_tokens[:, step].cpu()
        logp = torch.log_softmax(logits.float().cpu(), dim=-1).gather(1, tok.unsqueeze(1)).squeeze(1)
        total += torch.where(finished, torch.zeros_like(logp), logp)
        length += (~finished).float()
        finished |= tok == layout.eos_id
    return total / length.clamp(min=1) ** length_penalty


class T5CachedDecoder:
    """Step-by-step HF T5 decoder over (B, W) beams: token embeddings into a T5StackCache (cross K/V once per
    user, self-attention KV cache), logits from lm_head's rows. Eval semantics (no dropout)."""

    def __init__(self, model: nn.Module, layout: TokenLayout, enc_states: torch.Tensor, enc_mask: torch.Tensor):
        self.model = model
        self.layout = layout
        self.cache = T5StackCache(model.decoder, enc_states, enc_mask)
        self.scale = decoder_output_scale(model)
        self.vocab_head = model.lm_head.weight * self.scale  # (V, D), the whole vocabulary
        self.heads = [digit_rows(self.vocab_head, layout, level) for level in range(layout.num_levels)]

    def reorder(self, parents: torch.Tensor) -> None:
        """Keep, for each new beam (B, W'), the cache of its parent beam."""
        self.cache.reorder(parents)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B, W) tokens, return the (B, W, D) decoder output (after the final norm; T5's scale is in the heads)."""
        return self.cache.step(self.model.decoder.embed_tokens(tokens))

    def digit_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """(B, W, K_level) logits from decoder outputs, using only digit `level`'s lm_head rows."""
        return hidden @ self.heads[level].T

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, W, V) logits over the whole vocabulary (what HF's lm_head computes)."""
        return hidden @ self.vocab_head.T


class _CausalStepper(CausalOutputHeads):
    """Step-by-step decoder-only LM over (B, W) beams with the model's own KV cache (reordered per step)."""

    def __init__(self, model: nn.Module, layout: TokenLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.model = model
        self.base = model.base_model
        self.layout = layout
        self.cache_kw = cache_kwarg(self.base)
        ids, mask = causal_prompt(model, layout, input_ids, attention_mask)
        self.batch = ids.shape[0]
        self.mask = mask.long()
        self.last_pos = left_positions(self.mask)[:, -1]
        out = self.base(input_ids=ids, attention_mask=self.mask, position_ids=left_positions(self.mask),
                        use_cache=True)
        self.cache = output_cache(out)
        self.first = out.last_hidden_state[:, -1:]  # (B, 1, D)
        CausalOutputHeads.__init__(self, model, layout)
        self.width = 1

    def hidden(self, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, W, D) last hidden state after feeding each beam's digit level-1 (level 0: the prompt's)."""
        if level == 0:
            return self.first
        # The reference search keeps its beams on the CPU; the cache lives on the model's device.
        parents, prefixes = parents.to(self.mask.device), prefixes.to(self.mask.device)
        b, w = parents.shape
        flat = (torch.arange(b, device=parents.device).unsqueeze(1) * self.width + parents).reshape(-1)
        self.cache.reorder_cache(flat)
        self.width = w
        rows = torch.arange(b, device=parents.device).repeat_interleave(w)
        mask = torch.cat([self.mask[rows], self.mask.new_ones(b * w, level)], dim=1)
        tokens = self.layout.digit_tokens(level - 1, prefixes[:, :, -1]).reshape(b * w, 1)
        pos = (self.last_pos[rows] + level).unsqueeze(1)
        out = self.base(input_ids=tokens, attention_mask=mask, position_ids=pos, use_cache=True,
                        **{self.cache_kw: self.cache})
        self.cache = output_cache(out)
        return out.last_hidden_state.view(b, w, -1)


class UnconstrainedSteps(ReferenceSteps):
    """Beam steps with every code of each digit allowed (no catalog mask); invalid beams dropped and counted."""

    def allowed(self, level: int, prefixes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Every code of digit `level` for each live beam."""
        k = self.catalog.codebook_sizes[level]
        return torch.isfinite(scores).unsqueeze(-1).expand(-1, -1, k)

    def finalize(self, prefixes: torch.Tensor, scores: torch.Tensor, top_n: int) -> DecodeOutput:
        """The final beams ranked by rank_beams (beams naming no item dropped and counted)."""
        return rank_beams(self.catalog, prefixes, scores, top_n)


class _T5Stepper:
    """Step-by-step T5 teacher over (B, W) beams: the encoder once, then T5CachedDecoder per digit."""

    def __init__(self, model: nn.Module, layout: TokenLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        enc = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        self.dec = T5CachedDecoder(model, layout, enc, attention_mask)
        self.layout = layout
        self.start = int(model.config.decoder_start_token_id)
        self.device = input_ids.device
        self.digit_logits = self.dec.digit_logits
        self.vocab_logits = self.dec.vocab_logits

    def hidden(self, level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, W, D) decoder output after feeding each beam's digit level-1 (level 0: the decoder start)."""
        if level == 0:
            tokens = torch.full((prefixes.shape[0], 1), self.start, dtype=torch.long, device=self.device)
        else:
            self.dec.reorder(parents.to(self.device))
            tokens = self.layout.digit_tokens(level - 1, prefixes[:, :, -1].to(self.device))
        return self.dec.step(tokens)


def _step_fn(stepper, over_vocab: bool) -> StepFn:
    """A stateful StepFn: digit logits, or (over_vocab) their log-probabilities under the whole vocabulary."""

    def step_fn(level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
        hidden = stepper.hidden(level, prefixes, parents)
        logits = stepper.digit_logits(hidden, level)
        if not over_vocab:
            return logits
        return logits.float() - torch.logsumexp(stepper.vocab_logits(hidden).float(), dim=-1, keepdim=True)

    return step_fn


def _final_logp(stepper, tokens: tuple[int, ...]) -> FinalLogp:
    """final_token.FinalLogp: each final beam's log-probability of the fixed tokens after its digits (the answer
    suffix, then EOS), each under the whole vocabulary (HF's steps L+1, L+2, ...)."""

    def final_logp(prefixes: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        hidden = stepper.hidden(prefixes.shape[2], prefixes, parents)
        total = None
        for j, token in enumerate(tokens):
            if j:  # feed the previous fixed token to every beam (only the shared-prompt stepper has suffixes)
                hidden = stepper.feed(torch.full(hidden.shape[:2], tokens[j - 1], dtype=torch.long))
            full = stepper.vocab_logits(hidden).float()
            logp = full[..., token] - torch.logsumexp(full, dim=-1)
            total = logp if total is None else total + logp
        return total

    return final_logp


def _observed(step_fn, observe):
    """step_fn that also hands each step's prefixes and logits to observe."""

    def fn(level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
        logits = step_fn(level, prefixes, parents)
        observe(level, prefixes, logits)
        return logits

    return fn


@torch.no_grad()
def attention_beam_search(
    model: nn.Module,
    layout: TokenLayout,
    catalog: SIDCatalog,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    beam_size: int,
    top_n: int,
    constrained: bool = True,
    observe: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
    renormalize: bool = True,
) -> DecodeOutput:
    """Cached attention-decoder beam search over digit-restricted logits; catalog-constrained by default.

    observe(level, prefixes (B, W, level), logits (B, W, K_level)), if given, sees the digit logits of
    every beam at every step (distillation records the teacher's beam tree with it).
    renormalize=False (constrained only): HF generate's scores under a catalog-trie prefix_allowed_tokens_fn
    (log-softmax over the whole vocabulary, masked; EOS scored at step L+1 where the teacher ends items
    with it; a per-digit-head teacher: over each digit's head, no EOS); observe then sees those log-probabilities.
    """
    _check_decode_args(model, layout, catalog, input_ids, attention_mask, beam_size, top_n)
    if not isinstance(renormalize, bool):
        raise InvalidInputType(f"renormalize must be a bool, got {type(renormalize).__name__}")
    if not renormalize and not constrained:
        raise InvalidInput("renormalize=False needs constrained=True (it reproduces HF generate with a catalog trie)")
    was_training = model.training
    model.eval()
    try:
        own = hasattr(model, "beam_step_fn")
        if own:  # the model's own step function (teacher/digit_heads.py); its "vocabulary" is each digit's head
            step_fn = model.beam_step_fn(layout, input_ids, attention_mask, log_probs=not renormalize)
        else:
            if getattr(model.config, "is_encoder_decoder", False):
                stepper = _T5Stepper(model, layout, input_ids, attention_mask)
            elif uses_shared_prompt(model):  # LLaMA family, GPT-2: one prompt cache per user, shared by its beams
                stepper = SharedPromptStepper(model, layout, input_ids, attention_mask)
            else:
                stepper = _CausalStepper(model, layout, input_ids, attention_mask)
            step_fn = _step_fn(stepper, over_vocab=not renormalize)
        if observe is not None:
            step_fn = _observed(step_fn, observe)
        batch = input_ids.shape[0]
        if not constrained:
            return beam_search(UnconstrainedSteps(step_fn, catalog), batch, beam_size, top_n)
        final = None
        fmt = None if renormalize or own else SequenceFormat.of(model)  # per-digit heads score no EOS
        fixed = () if fmt is None else fmt.suffix + ((layout.eos_id,) if fmt.ends_with_eos else ())
        if fixed:
            final = _final_logp(stepper, fixed)
        out = constrained_beam_search(step_fn, catalog, batch, beam_size, top_n, device=input_ids.device,
                                      renormalize=renormalize, final_logp=final)
    finally:
        model.train(was_training)
    # Results on the CPU whichever path ran, like hf_generate's (one copy, after the search).
    items, codes, scores = out.items.cpu(), out.codes.cpu(), out.scores.cpu()
    zeros = torch.zeros(batch, dtype=torch.long)
    return DecodeOutput(
        items=items,
        codes=codes,
        scores=scores,
        num_invalid=zeros,
        num_duplicate=zeros.clone(),
        beam_codes=codes,
        beam_scores=scores,
    )
