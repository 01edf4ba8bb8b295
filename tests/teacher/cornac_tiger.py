"""cornac 3.0.1's own TIGER (cornac/models/tiger/), trained here for a few steps and saved with its own save.

Nothing here re-implements cornac: the model, its tokenizer, its training loop, its pickle and the
functions that compute its outputs are cornac's. The two helpers below only call them the way
cornac's own code does:

- `encoder_inputs`: TIGER.score's encoder input (recom_tiger.py), for several histories at once:
  the last `max_len` items, left-padded with `pad_idx`, as rows of `enc_token_table`; mask = tokens != 0.
- `digit_logprobs`: the body of TIGERSeq2Seq.forward / score_all_items (tiger.py) with its own
  `encode_history`, `_decode` and `heads`, stopped before the loss: each level's log_softmax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Small sizes: 2 levels of 4 codes (rkmeans: no tokenizer training) for 40 items, so many items share
# codes and cornac's dedup level disambiguates them; n_epochs 1 at batch 16 is ~15 optimizer steps.
SIZES = dict(tokenizer="rkmeans", rqvae_num_levels=2, rqvae_codebook_size=4, d_model=16, d_ff=24, num_heads=2,
             d_kv=6, num_enc_layers=2, num_dec_layers=1, max_len=5, n_epochs=1, batch_size=16, n_beams=8)


def dataset(n_items: int = 40, n_sessions: int = 60, feature_dim: int = 8, seed: int = 0):
    """A tiny cornac NextItemEvaluation: random sessions of 3-6 distinct items, random item features."""
    from cornac.data import FeatureModality
    from cornac.eval_methods import NextItemEvaluation

    rng = np.random.default_rng(seed)
    raw = [f"movie{j:03d}" for j in rng.permutation(n_items)]  # cornac maps raw ids to indices by first sight
    rows = []
    for s in range(n_sessions):
        for t, item in enumerate(rng.choice(n_items, int(rng.integers(3, 7)), replace=False)):
            rows.append((f"s{s}", raw[item], t))
    features = rng.normal(size=(n_items, feature_dim)).astype("float32")
    return NextItemEvaluation.from_splits(train_data=rows, test_data=rows[:12], fmt="SIT",
                                          item_feature=FeatureModality(features=features, ids=raw))


def train(seed: int = 0, **overrides):
    """cornac's TIGER fit on `dataset()` (cornac reseeds torch's global RNG in fit: kept inside a fork)."""
    from cornac.models import TIGER

    method = dataset(seed=seed)
    rec = TIGER(**{**SIZES, **overrides}, device="cpu", seed=seed)
    with torch.random.fork_rng():
        rec.fit(method.train_set)
    return rec


def save(rec, directory: str | Path) -> Path:
    """cornac's Recommender.save: a pickle at <directory>/TIGER/<timestamp>.pkl."""
    return Path(rec.save(str(directory)))


def load(path: str | Path):
    """cornac's Recommender.load of a saved pickle (a fresh copy per caller)."""
    from cornac.models import Recommender

    return Recommender.load(str(path))


def encoder_inputs(rec, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """TIGER.score's (enc_tokens, enc_mask) for each history (cornac item indices), stacked."""
    rows = []
    for items in histories:
        hist = list(items)[-rec.max_len:]
        rows.append([rec.pad_idx] * (rec.max_len - len(hist)) + hist)
    tokens = torch.tensor(rec.enc_token_table[rows].reshape(len(rows), -1), dtype=torch.long)
    return tokens, (tokens != 0).float()


def digit_logprobs(rec, histories: list[list[int]], targets: list[int]) -> list[torch.Tensor]:
    """Per-level log-probabilities (B, K_l) of cornac's model, teacher-forced on the targets' SIDs."""
    model = rec.model.eval()
    tokens, mask = encoder_inputs(rec, histories)
    target = torch.as_tensor(rec.sid_table[targets], dtype=torch.long)
    with torch.no_grad():
        enc = model.encode_history(tokens, mask)
        h = model._decode(target[:, :-1], enc, mask)
        return [F.log_softmax(model.heads[level](h[:, level]), dim=-1) for level in range(model.num_levels)]
