"""`constrained_generate`: the teacher's own exact decode, catalog-constrained, as a drop-in for its HF generate.

No distillation: the attention decoder runs with a KV cache (cross-attention K/V once per user)
and the catalog constraint on the C++ index (attention_decode.attention_beam_search), and the
result comes back as HF generate returns it for that teacher (hf_output.py): `sequences` in the
teacher's token ids, or with return_dict_in_generate a GenerateOutput (`sequences`,
`sequences_scores` with output_scores, and the ranked `items`, `codes`, `scores`).

renormalize=False (the default) scores as HF generate with a catalog-trie `prefix_allowed_tokens_fn`
does, and as STATIC and the official SID-MLP code do: log-softmax over the whole vocabulary, then the
mask, EOS's log-probability at step L+1 (a tested property: same beams as HF, scores within 1e-4).
renormalize=True is docs/architecture.md, "Decoding semantics" (log-softmax over the valid children).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..data.catalog import SIDCatalog
from ..data.layout import TokenLayout
from ..decode.types import GenerateOutput, check_generate_args
from ..errors import InvalidInputType
from .adapters import as_adapter
from .attention_decode import attention_beam_search
from .hf_output import SequenceFormat, hf_output

__all__ = ["constrained_generate"]


def constrained_generate(
    teacher,
    catalog: SIDCatalog,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    num_beams: int = 50,
    num_return_sequences: int = 10,
    renormalize: bool = False,
    return_dict_in_generate: bool = False,
    output_scores: bool = False,
    *,
    length_penalty: float = 1.0,
    layout: Optional[TokenLayout] = None,
) -> Union[torch.Tensor, GenerateOutput]:
    """Catalog-constrained beam search of a teacher (HF T5, decoder-only, or per-digit heads), returned as HF
    generate returns it.

    teacher: the HF model, or its adapter (`sk.adapter_for(model, layout)`); layout: the teacher's
    TokenLayout (default: the adapter's, else the catalog's `tiger` layout). input_ids /
    attention_mask in the encoder layout ([user, SIDs..., EOS]); attention_mask=None means all ones.
    length_penalty: HF's (sequences_scores = summed log-probs / new_tokens**length_penalty).
    A catalog with shared SIDs: `sequences` hold one row per SID (HF's beams), the GenerateOutput's
    items / codes / scores every item of those SIDs (SIDCatalog.expand).
    """
    check_generate_args(num_beams, num_return_sequences, length_penalty)
    if not isinstance(catalog, SIDCatalog):
        raise InvalidInputType(f"catalog must be a SIDCatalog, got {type(catalog).__name__}")
    if not isinstance(input_ids, torch.Tensor):
        raise InvalidInputType(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    adapter = as_adapter(teacher, catalog, layout)
    model = getattr(adapter, "model", None)
    if not SequenceFormat.known(model):
        raise InvalidInputType("teacher must be a HF model, a per-digit-head teacher (load_teacher / import_teacher) "
                               f"or an adapter holding one as .model, got {type(teacher).__name__}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    out = attention_beam_search(model, adapter.layout, catalog, input_ids, attention_mask, num_beams,
                                num_return_sequences, renormalize=renormalize)
    return hf_output(out, adapter.layout, SequenceFormat.of(model), input_ids, attention_mask,
                     length_penalty=length_penalty, return_dict_in_generate=return_dict_in_generate,
                     output_scores=output_scores, catalog=catalog)
