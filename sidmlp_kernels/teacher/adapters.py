"""Teacher adapters: the interface the SID-MLP accelerator consumes.

An adapter wraps a trained generative recommender and its TokenLayout and
exposes exactly three things: the user's encoded context (`encode`), the
teacher-forced per-digit logits restricted to each digit's codes
(`digit_logits`), and the teacher's token embeddings of each digit's codes
(`code_embeddings`). Adapters never change the grad mode: wrap calls in
`torch.no_grad()` / `torch.inference_mode()` when distilling from a frozen teacher.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from ..data.catalog import SIDCatalog
from ..data.layout import TokenLayout, drop_final_eos, to_left_padding
from ..decode.types import Encoded
from ..errors import InvalidInput, InvalidInputType

__all__ = [
    "Encoded",
    "TeacherAdapter",
    "T5TeacherAdapter",
    "CausalLMTeacherAdapter",
    "PROMPT_FORMATS",
    "adapter_for",
    "causal_prompt",
    "check_model_layout",
    "prompt_format",
    "prompt_ids",
]

# How a decoder-only teacher reads a history (model.config.sid_prompt, saved in its config.json):
# "eos"   [user, SIDs..., EOS], then the target SID: TIGER's prompt, trained per prefix;
# "items" [user, SIDs...], the next item's first digit follows the last history item: the
#         full-sequence teacher (teacher/sequence.py), trained with a loss at every position.
# "text"  a text prompt given as it is (an LLM with SID tokens in its tokenizer: teacher/llm.py);
#         the answer is the L SID tokens, then model.config.sid_answer_suffix (token ids), then EOS
#         (none where model.config.sid_answer_eos is False: OpenOneRec).
PROMPT_FORMATS = ("eos", "items", "text")


@runtime_checkable
class TeacherAdapter(Protocol):
    """What the accelerator needs from a teacher (see module docstring)."""

    layout: TokenLayout
    hidden_size: int

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """Encode (B, T) inputs in the adapter's layout."""
        ...

    def digit_logits(self, encoded: Encoded, prefix_codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced logits: L tensors (B, K_l), digit l given prefix_codes[:, :l]."""
        ...

    def code_embeddings(self, level: int) -> torch.Tensor:
        """(K_l, D) token embeddings of digit `level`'s codes."""
        ...


def check_model_layout(model: nn.Module, layout: TokenLayout, catalog: Optional[SIDCatalog] = None) -> None:
    """ValueError if the model's vocabulary or special tokens disagree with the layout (or it with the catalog).

    A model with its own `check_layout(layout, catalog)` (teacher/digit_heads.py) checks itself."""
    if hasattr(model, "check_layout"):
        model.check_layout(layout, catalog)
        return
    if catalog is not None:
        layout.validate_against(catalog)
    cfg = model.config
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab < layout.vocab_size:
        raise InvalidInput(
            f"model has {vocab} token embeddings but the layout needs vocab_size {layout.vocab_size} "
            f"(codebook_sizes {list(layout.codebook_sizes)}, {layout.num_user_tokens} user tokens)"
        )
    out = model.get_output_embeddings()
    if out is None or out.weight.shape[0] < layout.vocab_size:
        raise InvalidInput(f"model's output head must have >= {layout.vocab_size} rows")
    pad = getattr(cfg, "pad_token_id", None)
    if pad is not None and pad != layout.pad_id:
        raise InvalidInput(f"model.config.pad_token_id is {pad} but the layout's pad id is {layout.pad_id}")
    eos = getattr(cfg, "eos_token_id", None)
    if eos is not None and eos != layout.eos_id and not (isinstance(eos, list) and layout.eos_id in eos):
        raise InvalidInput(f"model.config.eos_token_id is {eos} but the layout's EOS id is {layout.eos_id}")
    if getattr(cfg, "is_encoder_decoder", False):
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is None:
            raise InvalidInput(f"model.config.decoder_start_token_id must be set (the layout's is "
                               f"{layout.decoder_start_id})")
        if int(start) != layout.decoder_start_id:
            raise InvalidInput(f"model.config.decoder_start_token_id is {start} but the layout's decoder start id is "
                               f"{layout.decoder_start_id}")
        if not 0 <= int(start) < vocab:
            raise InvalidInput(f"model.config.decoder_start_token_id {start} is outside the vocabulary [0, {vocab})")


def _check_prefix_codes(layout: TokenLayout, prefix_codes: torch.Tensor, batch: int) -> torch.Tensor:
    """Validate (B, L) or (B, L-1) teacher-forcing codes; return the (B, L-1) token ids fed back."""
    if not isinstance(prefix_codes, torch.Tensor) or prefix_codes.dim() != 2:
        got = getattr(prefix_codes, "shape", type(prefix_codes))
        raise InvalidInput(f"prefix_codes must be a (B, L) tensor, got {got}")
    num_levels = layout.num_levels
    if prefix_codes.shape[0] != batch or prefix_codes.shape[1] not in (num_levels, num_levels - 1):
        raise InvalidInput(
            f"prefix_codes must have shape ({batch}, {num_levels}) (or ({batch}, {num_levels - 1})), "
            f"got {tuple(prefix_codes.shape)}"
        )
    width = prefix_codes.shape[1]
    full = prefix_codes if width == num_levels else torch.cat(
        [prefix_codes, prefix_codes.new_zeros(batch, 1)], dim=1
    )
    return layout.codes_to_tokens(full)[:, : num_levels - 1]


def digit_rows(weight: torch.Tensor, layout: TokenLayout, level: int) -> torch.Tensor:
    """(K_l, ...) rows of a per-token tensor (embedding, output head, bias) for digit `level`'s codes, in code
    order: a view of a contiguous layout's range, else gathered through the layout's token table."""
    if layout.contiguous:
        return weight[slice(*layout.digit_token_range(level))]
    return weight[layout.digit_token_ids(level, weight.device)]


class CausalOutputHeads:
    """A causal LM's output head and its rows per digit: the steppers' digit and whole-vocabulary logits."""

    def __init__(self, model: nn.Module, layout: TokenLayout):
        self.head = model.get_output_embeddings()
        bias = getattr(self.head, "bias", None)
        self.heads = [(digit_rows(self.head.weight, layout, level), None if bias is None else digit_rows(bias, layout, level))
                      for level in range(layout.num_levels)]

    def digit_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """(B, W, K_level) logits of digit `level`'s codes only."""
        weight, bias = self.heads[level]
        out = hidden @ weight.T
        return out if bias is None else out + bias

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, W, V) logits over the whole vocabulary (the model's output head)."""
        return self.head(hidden)


def cache_kwarg(model: nn.Module) -> str:
    """Name of the KV-cache argument of model.forward ('cache' in transformers >= 5.x, else 'past_key_values')."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(outputs):
    """The KV cache of a model output, whatever transformers version named it."""
    cache = getattr(outputs, "cache", None)
    return cache if cache is not None else getattr(outputs, "past_key_values", None)


class T5TeacherAdapter:
    """Adapter for a HuggingFace T5 encoder-decoder in a TokenLayout (decoder starts with its decoder start id)."""

    def __init__(self, model: nn.Module, layout: TokenLayout, catalog: Optional[SIDCatalog] = None):
        if not getattr(model.config, "is_encoder_decoder", False):
            raise InvalidInput("T5TeacherAdapter needs an encoder-decoder model; use CausalLMTeacherAdapter")
        check_model_layout(model, layout, catalog)
        self.model = model
        self.layout = layout
        self.hidden_size = int(model.config.d_model)

    @property
    def output_scale(self) -> float:
        """Factor T5 applies to decoder outputs before lm_head (d_model**-0.5 when embeddings are tied)."""
        return decoder_output_scale(self.model)

    def digit_head(self, level: int) -> torch.Tensor:
        """(K_l, D) lm_head rows of digit `level`, output scale folded in."""
        return digit_rows(self.model.lm_head.weight, self.layout, level) * self.output_scale

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """Run the T5 encoder once per user."""
        self.layout.check_inputs(input_ids, attention_mask, vocab_size=self.model.config.vocab_size)
        states = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return Encoded(states=states, mask=attention_mask.bool())

    def digit_logits(self, encoded: Encoded, prefix_codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced decoder pass over [start, tok(c_0), ..., tok(c_{L-2})]; L tensors (B, K_l)."""
        batch = encoded.states.shape[0]
        fed = _check_prefix_codes(self.layout, prefix_codes.to(encoded.states.device), batch)
        start = torch.full((batch, 1), int(self.model.config.decoder_start_token_id), dtype=torch.long,
                           device=fed.device)
        dec_ids = torch.cat([start, fed], dim=1)
        hidden = self.model.decoder(
            input_ids=dec_ids,
            encoder_hidden_states=encoded.states,
            encoder_attention_mask=encoded.mask.long(),
            use_cache=False,
        ).last_hidden_state
        return [hidden[:, level] @ self.digit_head(level).T for level in range(self.layout.num_levels)]

    def code_embeddings(self, level: int) -> torch.Tensor:
        """(K_l, D) rows of the shared token embedding for digit `level`."""
        return digit_rows(self.model.get_input_embeddings().weight, self.layout, level)


def decoder_output_scale(model: nn.Module) -> float:
    """T5's pre-lm_head scale: d_model**-0.5 if the model scales decoder outputs, else 1."""
    cfg = model.config
    # transformers 5 records it as scale_decoder_outputs; 4.x scaled iff tie_word_embeddings.
    scale = getattr(cfg, "scale_decoder_outputs", None)
    if scale is None:
        scale = getattr(cfg, "tie_word_embeddings", True)
    return float(cfg.d_model) ** -0.5 if scale else 1.0


def prompt_format(model: nn.Module) -> str:
    """model.config.sid_prompt of a decoder-only teacher ("eos" when unset); ValueError if unknown."""
    fmt = getattr(model.config, "sid_prompt", None) or "eos"
    if fmt not in PROMPT_FORMATS:
        raise InvalidInput(f"model.config.sid_prompt must be one of {PROMPT_FORMATS}, got {fmt!r}")
    return fmt


def causal_prompt(
    model: nn.Module, layout: TokenLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder inputs ([user, SIDs..., EOS], any padding) as the decoder-only model's left-padded prompt."""
    return prompt_ids(prompt_format(model), layout, input_ids, attention_mask)


def prompt_ids(
    fmt: str, layout: TokenLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """causal_prompt for a prompt format (PROMPT_FORMATS) instead of a model."""
    if fmt not in PROMPT_FORMATS:
        raise InvalidInput(f"prompt format must be one of {PROMPT_FORMATS}, got {fmt!r}")
    if fmt == "text" and layout.contiguous:
        raise InvalidInput("prompt format 'text' goes with a 'tokenizer' token layout (teacher/llm.py)")
    if fmt == "items":
        return drop_final_eos(input_ids, attention_mask, layout.eos_id)
    return to_left_padding(input_ids, attention_mask)


def left_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a (left-)padded mask: 0 at each row's first real token (pads get 0)."""
    mask = attention_mask.long()
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


class CausalLMTeacherAdapter:
    """Adapter for a decoder-only HF causal LM (GPT-2 style): prompt = [user, history SIDs..., EOS], or
    [user, history SIDs...] for a full-sequence teacher (prompt_format "items")."""

    def __init__(self, model: nn.Module, layout: TokenLayout, catalog: Optional[SIDCatalog] = None):
        if getattr(model.config, "is_encoder_decoder", False):
            raise InvalidInput("CausalLMTeacherAdapter needs a decoder-only model; use T5TeacherAdapter")
        check_model_layout(model, layout, catalog)
        self.model = model
        self.layout = layout
        self.hidden_size = int(model.config.hidden_size)

    def digit_head(self, level: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(K_l, D) output-head rows of digit `level` and their bias (or None)."""
        head = self.model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        return digit_rows(head.weight, self.layout, level), None if bias is None else digit_rows(bias, self.layout, level)

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states (after the final norm) of left-padded inputs."""
        return self.model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=left_positions(attention_mask),
            use_cache=False,
        ).last_hidden_state

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """Run the LM over the prompt (re-padded on the left); states are its last-layer hidden states."""
        self.layout.check_inputs(input_ids, attention_mask, vocab_size=self.model.config.vocab_size)
        input_ids, attention_mask = causal_prompt(self.model, self.layout, input_ids, attention_mask)
        states = self._hidden(input_ids, attention_mask)
        return Encoded(states=states, mask=attention_mask.bool(), input_ids=input_ids)

    def _prompt_and_digits(self, ids: torch.Tensor, mask: torch.Tensor, prefix_codes: torch.Tensor):
        """Hidden states of prompt + tok(c_0..c_{L-2}) (one pass) and digit l's logits from position T-1+l."""
        batch, t = ids.shape
        fed = _check_prefix_codes(self.layout, prefix_codes.to(ids.device), batch)
        hidden = self._hidden(torch.cat([ids, fed], dim=1), torch.cat([mask.long(), torch.ones_like(fed)], dim=1))
        out = []
        for level in range(self.layout.num_levels):
            weight, bias = self.digit_head(level)
            logits = hidden[:, t - 1 + level] @ weight.T
            out.append(logits if bias is None else logits + bias)
        return hidden, out

    def digit_logits(self, encoded: Encoded, prefix_codes: torch.Tensor) -> list[torch.Tensor]:
        """Run the LM over prompt + tok(c_0..c_{L-2}); digit l's logits come from position T-1+l."""
        if encoded.input_ids is None:
            raise InvalidInput("encoded.input_ids is None: CausalLMTeacherAdapter.digit_logits needs encode()'s output")
        return self._prompt_and_digits(encoded.input_ids, encoded.mask, prefix_codes)[1]

    def encode_and_digit_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_codes: torch.Tensor
    ) -> tuple[Encoded, list[torch.Tensor]]:
        """encode() and digit_logits() in one pass: causal, so the prompt's states ignore the digits fed after it."""
        self.layout.check_inputs(input_ids, attention_mask, vocab_size=self.model.config.vocab_size)
        ids, mask = causal_prompt(self.model, self.layout, input_ids, attention_mask)
        hidden, logits = self._prompt_and_digits(ids, mask, prefix_codes)
        return Encoded(states=hidden[:, : ids.shape[1]], mask=mask.bool(), input_ids=ids), logits

    def code_embeddings(self, level: int) -> torch.Tensor:
        """(K_l, D) rows of the input token embedding for digit `level`."""
        return digit_rows(self.model.get_input_embeddings().weight, self.layout, level)


def adapter_for(model: nn.Module, layout: TokenLayout, catalog: Optional[SIDCatalog] = None) -> TeacherAdapter:
    """The adapter matching a HF model: T5-style encoder-decoder or decoder-only causal LM; a model with its
    own `teacher_adapter(layout, catalog)` (teacher/digit_heads.py) gives that."""
    if hasattr(model, "teacher_adapter"):
        return model.teacher_adapter(layout, catalog)
    if getattr(model.config, "is_encoder_decoder", False):
        if not hasattr(model, "encoder") or not hasattr(model, "lm_head"):
            raise InvalidInput(f"unsupported encoder-decoder model {type(model).__name__}: expected a T5-style model")
        return T5TeacherAdapter(model, layout, catalog)
    return CausalLMTeacherAdapter(model, layout, catalog)
def _is_adapter(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("encode", "digit_logits", "code_embeddings", "layout", "hidden_size"))


def as_adapter(teacher: Any, catalog: Optional[SIDCatalog] = None, layout: Optional[TokenLayout] = None):
    """A TeacherAdapter for `teacher` (an adapter already, or a HF T5 / causal LM via adapter_for)."""
    if _is_adapter(teacher):
        adapter = teacher
        if layout is not None and adapter.layout != layout:
            raise InvalidInput(f"teacher adapter has layout {adapter.layout}, but layout={layout} was given")
    elif isinstance(teacher, torch.nn.Module) and (hasattr(teacher, "config") or hasattr(teacher, "teacher_adapter")):
        layout = getattr(teacher, "layout", None) if layout is None else layout  # a per-digit-head teacher's own
        if layout is None:
            if catalog is None:
                raise InvalidInput("a HF teacher needs a layout or a catalog to derive one from")
            layout = TokenLayout.for_catalog(catalog)
        adapter = adapter_for(teacher, layout, catalog)
    else:
        raise InvalidInputType(
            f"teacher must be a TeacherAdapter or a HF model, got {type(teacher).__name__}"
        )
    if catalog is not None:
        adapter.layout.validate_against(catalog)
    return adapter


