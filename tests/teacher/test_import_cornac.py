"""cornac 3.0.1's own TIGER, imported with sk.import_teacher("cornac") / `sidmlp import --format cornac`.

The model is cornac's: fit by cornac for a few steps on a tiny dataset and saved with cornac's own
Recommender.save (cornac_tiger.py, the session fixture `cornac_saved`). Every expected value comes
from cornac's own code: its forward (the training loss), its score / rank APIs in both scoring modes
('exact': every item's log-likelihood; 'beam': its constrained beam search), its item-id map.
The per-digit log-probs and the accelerate() path (its HF-style generate() included) are also checked
for cornac, with GRID and RQ-VAE-Recommender, in test_import_digit_heads.py.
"""

import json
import sys

import numpy as np
import pytest
import torch

import sidmlp_kernels as sk
from sidmlp_kernels.io import ArtifactError
from sidmlp_kernels.teacher.adapters import adapter_for
from tests.helpers import assert_sequences_decode_to_ranked_items
from tests.teacher import cornac_tiger

pytest.importorskip("cornac")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def imported(cornac_saved, tmp_path):
    """(cornac's recommender, freshly loaded by cornac; our teacher, layout and catalog imported from its pickle)."""
    sk.import_teacher("cornac", cornac_saved, None, tmp_path / "imported")
    model, layout = sk.load_teacher(tmp_path / "imported")
    return cornac_tiger.load(cornac_saved), model, layout, sk.SIDCatalog.load(tmp_path / "imported")


def histories(rec, n, seed):
    """n histories of 1..max_len distinct cornac item indices (at most max_len: cornac's score keeps no more)."""
    rng = np.random.default_rng(seed)
    return [rng.choice(rec.total_items, int(rng.integers(1, rec.max_len + 1)), replace=False).tolist()
            for _ in range(n)]


def our_inputs(layout, catalog, hist):
    # Our catalog's item ids are cornac's item indices (sid_to_item), so histories pass as they are.
    return layout.encode_histories(hist, catalog)


def test_catalog_is_cornacs_sid_table_and_item_map(imported, tmp_path):
    rec, model, layout, catalog = imported
    assert list(layout.codebook_sizes) == list(rec.level_sizes)
    assert catalog.item_ids.tolist() == [rec.sid_to_item[tuple(int(c) for c in row)] for row in rec.sid_table]
    assert torch.equal(catalog.codes, torch.as_tensor(rec.sid_table))
    assert int(rec.sid_table[:, -1].max()) > 0  # items share codes: cornac's dedup level is exercised
    keys = json.loads((tmp_path / "imported" / "item_keys.json").read_text())
    assert dict(zip(keys["keys"], keys["item_ids"])) == rec.iid_map  # cornac's raw item ids -> its indices


def test_teacher_forced_loss_equals_cornacs_forward(imported):
    """TIGERSeq2Seq.forward (cornac's training loss: the sum over levels of the mean cross-entropy) from our
    imported teacher's per-digit logits, on the same histories and targets."""
    rec, model, layout, catalog = imported
    hist = histories(rec, 7, seed=1)
    targets = [(3 * r + 1) % rec.total_items for r in range(7)]
    tokens, mask = cornac_tiger.encoder_inputs(rec, hist)
    adapter = adapter_for(model, layout, catalog)
    ids, our_mask = our_inputs(layout, catalog, hist)
    codes = catalog.codes_of(torch.tensor(targets))
    with torch.no_grad():
        theirs = rec.model.eval()(tokens, mask, torch.as_tensor(rec.sid_table[targets]))
        logits = adapter.digit_logits(adapter.encode(ids, our_mask), codes)
    ours = -sum(lg.log_softmax(-1).gather(1, codes[:, [level]]).mean() for level, lg in enumerate(logits))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_exact_scores_and_ranking_equal_cornacs(imported):
    """cornac's scoring='exact' (score_all_items: every item's log-likelihood) equals the imported teacher's,
    and its full ranking (rank) equals sk.constrained_generate with a beam as wide as the catalog."""
    rec, model, layout, catalog = imported
    rec.scoring = "exact"
    n = catalog.num_items
    hist = histories(rec, 3, seed=2)
    ids, mask = our_inputs(layout, catalog, hist)
    adapter = adapter_for(model, layout, catalog)
    with torch.no_grad():
        enc = adapter.encode(ids, mask)
        out = sk.constrained_generate(model, catalog, ids, mask, num_beams=n, num_return_sequences=n,
                                      renormalize=False, return_dict_in_generate=True)
    for u, h in enumerate(hist):
        theirs = torch.as_tensor(rec.score(0, h), dtype=torch.float32)  # indexed by cornac item index
        states = type(enc)(states=enc.states[u : u + 1].expand(n, -1, -1), mask=enc.mask[u : u + 1].expand(n, -1))
        with torch.no_grad():
            logits = adapter.digit_logits(states, catalog.codes)
        ours = sum(lg.log_softmax(-1).gather(1, catalog.codes[:, [level]]).squeeze(1)
                   for level, lg in enumerate(logits))
        torch.testing.assert_close(ours, theirs[catalog.item_ids], atol=1e-5, rtol=0)
        ranked, _ = rec.rank(0, history_items=h)
        assert out.items[u].tolist() == ranked.tolist()
        torch.testing.assert_close(out.scores[u], theirs[ranked], atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_beams", [3, 8])
def test_beam_recommendations_equal_cornacs(imported, n_beams):
    """cornac's scoring='beam' (generate_beam: one history per call, log-softmax over each level's head, then
    the trie mask) gives the items and scores of sk.constrained_generate(renormalize=False), in the same order,
    and the HF-style sequences decode to those items."""
    rec, model, layout, catalog = imported
    rec.scoring, rec.n_beams = "beam", n_beams
    hist = histories(rec, 4, seed=3)
    ids, mask = our_inputs(layout, catalog, hist)
    out = sk.constrained_generate(model, catalog, ids, mask, num_beams=n_beams, num_return_sequences=n_beams,
                                  renormalize=False, return_dict_in_generate=True, output_scores=True)
    for u, h in enumerate(hist):
        scores = rec.score(0, h)
        ranked, _ = rec.rank(0, history_items=h, k=n_beams)
        assert int((scores > -1e10).sum()) == n_beams  # cornac filled exactly its beams
        assert out.items[u].tolist() == ranked[:n_beams].tolist()
        torch.testing.assert_close(out.scores[u], torch.as_tensor(scores[ranked[:n_beams]], dtype=torch.float32),
                                   atol=1e-5, rtol=0)
    assert_sequences_decode_to_ranked_items(out, layout, catalog, start=1)  # [decoder start, digits..., EOS]


def test_cli_imports_without_cornac_installed(cornac_saved, tmp_path, monkeypatch):
    """`sidmlp import --format cornac` while `import cornac` fails: the importer needs no cornac."""
    from sidmlp_kernels.cli import main

    rec = cornac_tiger.load(cornac_saved)
    for name in [m for m in sys.modules if m == "cornac" or m.startswith("cornac.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import cornac...` now raises ImportError
    with pytest.raises(ImportError):
        cornac_tiger.load(cornac_saved)
    out = tmp_path / "out"
    assert main(["import", "--format", "cornac", "--checkpoint", str(cornac_saved), "--out", str(out)]) == 0
    model, layout = sk.load_teacher(out)
    assert list(layout.codebook_sizes) == list(rec.level_sizes)
    assert sk.SIDCatalog.load(out).num_items == rec.total_items
    assert torch.equal(model.bos.view(-1), rec.model.bos.view(-1))  # cornac's weights, as they are
    assert torch.equal(model.sid_embedding.weight, rec.model.token_emb.weight)


def test_unexpected_key_names_file_and_key(cornac_saved, tmp_path):
    rec = cornac_tiger.load(cornac_saved)
    rec.model.register_buffer("extra", torch.zeros(2))
    path = cornac_tiger.save(rec, tmp_path / "saved")
    with pytest.raises(ArtifactError, match=r"unexpected key 'model\.extra'") as err:
        sk.import_teacher("cornac", path, None, tmp_path / "out")
    assert path.name in str(err.value)
    assert not (tmp_path / "out").exists()
