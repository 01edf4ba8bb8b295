"""generate() results laid out as HF generate returns them for the teacher (docs/architecture.md, "HF-style generate").

HF `generate` returns `sequences` in the model's own token ids: for an encoder-decoder (T5,
TIGER) `[decoder_start, new tokens...]`, for a decoder-only LM the prompt it was given followed
by the new tokens. For a Semantic-ID teacher the new tokens are the L digit tokens (the layout's
`codes_to_tokens`) and EOS where the teacher ends an item with EOS (T5; a decoder-only teacher
with the "eos" prompt; not the full-sequence "items" teacher, whose L digits are the item).
`SequenceFormat` records which of these a teacher uses (so a saved SID-MLP++ model, which keeps
no teacher, still knows); `hf_output` turns ranked results into sequences and HF's beam scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from ..data.layout import TokenLayout
from ..decode.types import GenerateOutput, GenerationOutput
from ..errors import InvalidInput, InvalidInputType
from .adapters import PROMPT_FORMATS, prompt_format, prompt_ids

__all__ = ["SequenceFormat", "hf_output"]


@dataclass(frozen=True)
class SequenceFormat:
    """How a teacher's HF generate lays out sequences: encoder-decoder or not, and a decoder-only prompt format."""

    encoder_decoder: bool = True
    prompt: str = "eos"  # decoder-only only: adapters.PROMPT_FORMATS
    suffix: tuple[int, ...] = ()  # "text" prompts: tokens between the L digits and EOS (MiniOneRec: "\n")
    answer_eos: bool = True  # "text" prompts: EOS after the suffix (False: OpenOneRec's 3 SID tokens, nothing after)

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_FORMATS:
            raise InvalidInput(f"SequenceFormat.prompt must be one of {PROMPT_FORMATS}, got {self.prompt!r}")
        suffix = tuple(self.suffix)
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in suffix):
            raise InvalidInput(f"SequenceFormat.suffix must hold token ids (ints >= 0), got {self.suffix!r}")
        if suffix and self.prompt != "text":
            raise InvalidInput("an answer suffix goes with the 'text' prompt format only")
        if not isinstance(self.answer_eos, bool):
            raise InvalidInputType(f"SequenceFormat.answer_eos must be a bool, got {type(self.answer_eos).__name__}")
        if not self.answer_eos and self.prompt != "text":
            raise InvalidInput("answer_eos=False goes with the 'text' prompt format only")
        object.__setattr__(self, "suffix", suffix)

    @classmethod
    def known(cls, model: Any) -> bool:
        """Whether `of` can tell `model`'s format: a HF model, or one that declares its `sequence_format`."""
        return isinstance(model, nn.Module) and (isinstance(getattr(model, "sequence_format", None), cls)
                                                 or hasattr(model, "config"))

    @classmethod
    def of(cls, model: nn.Module) -> "SequenceFormat":
        """The format of a HF model (T5-style encoder-decoder, or a decoder-only LM and its prompt format), or the
        one a model without HF generate declares as `model.sequence_format` (teacher/digit_heads.py)."""
        declared = getattr(model, "sequence_format", None)
        if isinstance(declared, cls):
            return declared
        if getattr(model.config, "is_encoder_decoder", False):
            return cls(True)
        fmt = prompt_format(model)
        suffix = (getattr(model.config, "sid_answer_suffix", None) or ()) if fmt == "text" else ()
        answer_eos = bool(getattr(model.config, "sid_answer_eos", True)) if fmt == "text" else True
        return cls(False, fmt, tuple(int(t) for t in suffix), answer_eos)

    @classmethod
    def from_dict(cls, blob: Optional[dict]) -> "SequenceFormat":
        """From to_dict()'s output (None or {}: the default, an encoder-decoder)."""
        return cls(**(blob or {}))

    def to_dict(self) -> dict[str, Any]:
        blob = asdict(self)
        blob["suffix"] = list(self.suffix)
        return blob

    @property
    def ends_with_eos(self) -> bool:
        """Whether an item's L digit tokens are followed by EOS (HF generate with max_new_tokens = L + 1)."""
        return self.encoder_decoder or self.prompt == "eos" or (self.prompt == "text" and self.answer_eos)

    def new_tokens(self, layout: TokenLayout) -> int:
        """Tokens HF generates per item: L digits, the answer suffix, plus EOS if ends_with_eos."""
        return layout.num_levels + len(self.suffix) + int(self.ends_with_eos)

    def prefix(self, layout: TokenLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, P) tokens HF's sequences start with: the decoder start id, or the left-padded prompt."""
        if self.encoder_decoder:
            return torch.full((input_ids.shape[0], 1), layout.decoder_start_id, dtype=torch.long,
                              device=input_ids.device)
        return prompt_ids(self.prompt, layout, input_ids, attention_mask)[0].long()


def hf_output(
    result: GenerationOutput,
    layout: TokenLayout,
    fmt: SequenceFormat,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    length_penalty: float = 1.0,
    return_dict_in_generate: bool = False,
    output_scores: bool = False,
    catalog=None,
) -> Union[torch.Tensor, GenerateOutput]:
    """Ranked results (B, N) -> HF's `sequences` (B * N, S), or a GenerateOutput with return_dict_in_generate.

    sequences_scores = scores / new_tokens**length_penalty (HF's beam score), only with output_scores.
    An empty slot (item -1) gets pad tokens in place of its digits and EOS.
    catalog: where SIDs are shared, the GenerateOutput's items / codes / scores list every item of the
    ranked SIDs (catalog.expand) while sequences stay one per SID (docs/architecture.md, "Decoding semantics").
    """
    for name, flag in (("return_dict_in_generate", return_dict_in_generate), ("output_scores", output_scores)):
        if not isinstance(flag, bool):
            raise InvalidInputType(f"{name} must be a bool, got {type(flag).__name__}")
    device = input_ids.device
    items, codes, scores = result.items.to(device), result.codes.to(device), result.scores.to(device)
    batch, n, num_levels = codes.shape
    alive = (items >= 0).reshape(batch * n, 1)
    digits = layout.codes_to_tokens(torch.where(codes >= 0, codes, torch.zeros_like(codes))).reshape(batch * n, -1)
    parts = [fmt.prefix(layout, input_ids, attention_mask).repeat_interleave(n, dim=0), digits]
    if fmt.suffix:
        parts.append(torch.tensor(fmt.suffix, dtype=torch.long, device=device).expand(batch * n, -1))
    if fmt.ends_with_eos:
        parts.append(torch.full((batch * n, 1), layout.eos_id, dtype=torch.long, device=device))
    tail = torch.cat(parts[1:], dim=1)
    tail = torch.where(alive, tail, torch.full_like(tail, layout.pad_id))
    sequences = torch.cat([parts[0], tail], dim=1)
    if not return_dict_in_generate:
        return sequences
    seq_scores = scores.reshape(-1) / float(fmt.new_tokens(layout)) ** length_penalty if output_scores else None
    if catalog is not None:
        ranked = catalog.expand(GenerationOutput(items=items, codes=codes, scores=scores))
        items, codes, scores = ranked.items, ranked.codes, ranked.scores
    return GenerateOutput(sequences=sequences, sequences_scores=seq_scores, items=items, codes=codes, scores=scores)
