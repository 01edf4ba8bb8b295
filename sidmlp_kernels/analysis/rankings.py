"""Top-50 rankings of generative recommenders (teacher or SID-MLP student) for the analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..decode.types import GenerationOutput

Ranking = tuple[torch.Tensor, torch.Tensor]


def _rank_parts(
    prepared, layout, decode: Callable[[torch.Tensor, torch.Tensor], GenerationOutput], batch_size: int, desc: str
) -> dict[str, Ranking]:
    from ..data.examples import build_examples

    out: dict[str, Ranking] = {}
    for part in ("valid", "test"):
        ex = build_examples(prepared.split, prepared.catalog, layout, part=part)
        items, scores = [], []
        for s in tqdm(range(0, ex.input_ids.shape[0], batch_size), desc=f"{desc} {part}", leave=False):
            res = decode(ex.input_ids[s : s + batch_size], ex.attention_mask[s : s + batch_size])
            items.append(res.items)
            scores.append(res.scores)
        out[part] = (torch.cat(items), torch.cat(scores))
    return out


def teacher_rankings(prepared, teacher_dir: str | Path, beam_size: int = 50, batch_size: int = 64) -> dict[str, Ranking]:
    """Valid/test top-`beam_size` lists of a saved teacher's constrained attention decode."""
    from ..teacher.attention_decode import attention_beam_search
    from ..teacher.models import load_teacher

    model, layout = load_teacher(teacher_dir, catalog=prepared.catalog)

    def decode(ids: torch.Tensor, mask: torch.Tensor) -> GenerationOutput:
        with torch.no_grad():
            return attention_beam_search(model, layout, prepared.catalog, ids, mask, beam_size, beam_size)

    return _rank_parts(prepared, layout, decode, batch_size, "teacher")


def student_rankings(
    prepared, student_dir: str | Path, teacher_dir: str | Path, beam_size: int = 50, batch_size: int = 128
) -> dict[str, Ranking]:
    """Valid/test top-`beam_size` lists of a saved accelerated (SID-MLP) recommender."""
    from ..accelerated import AcceleratedRecommender
    from ..teacher.models import load_teacher

    model, layout = load_teacher(teacher_dir, catalog=prepared.catalog)
    fast = AcceleratedRecommender.from_pretrained(student_dir, teacher=model, catalog=prepared.catalog, layout=layout)

    def decode(ids: torch.Tensor, mask: torch.Tensor) -> GenerationOutput:
        with torch.no_grad():
            return fast.generate(ids, mask, beam_size=beam_size, top_n=beam_size)

    return _rank_parts(prepared, layout, decode, batch_size, "student")
