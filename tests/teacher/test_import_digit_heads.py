"""Per-digit-head teachers (teacher/digit_heads.py) imported from GRID, RQ-VAE-Recommender and cornac.

Each case writes the code base's artifact as it saves it, imports it, and compares our adapter's
per-digit logits with the original model's own forward on the same histories, built the original's
way (its collate / token tables), not through our layout. GRID and RQ-VAE-Recommender are not on the
package registry: digit_head_originals.py re-implements their models from their sources. cornac is
the real thing (cornac_tiger.py: cornac's own TIGER, fit and saved by cornac); its own recommendation
APIs are checked in test_import_cornac.py.
"""

import numpy as np
import pytest
import torch

import sidmlp_kernels as sk
from sidmlp_kernels.data.examples import Examples
from sidmlp_kernels.decode.reference import beam_search_reference
from sidmlp_kernels.io import ArtifactError
from sidmlp_kernels.teacher.adapters import adapter_for
from sidmlp_kernels.teacher.attention_decode import attention_beam_search
from tests.helpers import assert_sequences_decode_to_ranked_items
from tests.teacher import digit_head_originals as orig

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(head_hidden=16, ffn_dim=16, num_heads=2, batch_size=32)


def unique_codes(n, k, levels, seed):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, k, size=(n * 3, levels)), axis=0)[:n]
    rng.shuffle(codes)
    return codes


def histories(n_items, n, seed, longest=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, n_items, (int(torch.randint(1, longest + 1, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


# ---- the three cases: (original forward on our inputs' histories, imported directory) ---------------------


def grid_case(tmp_path, mlp_layers=2):
    k, levels = 5, 4
    sids = unique_codes(30, k, levels, seed=0)  # 3 codes + a dedup digit, all < K
    hydra = orig.grid_hydra_config(levels, mlp_layers=mlp_layers)
    torch.manual_seed(0)
    model = orig.GridModel(hydra, k).eval()
    ckpt, sid_file = orig.write_grid(tmp_path, hydra, model, sids)
    cfg = tmp_path / ".hydra" / "config.yaml"
    cfg.parent.mkdir()
    import yaml

    cfg.write_text(yaml.safe_dump(hydra))

    def original(hist, users, targets):
        ids, mask, user_id = orig.grid_batch(sids, hist, users)
        return model(ids, mask, user_id, torch.as_tensor(sids[targets]))

    return original, ckpt, sid_file, cfg


def rqvae_case(tmp_path):
    k, levels = 6, 3
    codebooks = torch.as_tensor(unique_codes(30, k, levels, seed=1))
    torch.manual_seed(1)
    model = orig.RqvaeModel(codebooks, levels, k, num_user_bins=4).eval()
    ckpt = orig.write_rqvae(tmp_path, model)

    def original(hist, users, targets):
        ids, mask, user_id = orig.grid_batch(codebooks.numpy(), hist, users)  # same padded SID rows
        return model(ids, mask, user_id, codebooks[targets])

    return original, ckpt, None, None


def cornac_case(request):
    from tests.teacher import cornac_tiger

    path = request.getfixturevalue("cornac_saved")  # skips without cornac
    rec = cornac_tiger.load(path)

    def original(hist, users, targets):  # our catalog's item ids are cornac's item indices
        return cornac_tiger.digit_logprobs(rec, hist, targets)

    return original, path, None, None


def make_case(fmt, tmp_path, request):
    if fmt == "grid":
        return grid_case(tmp_path)
    if fmt == "rqvae":
        return rqvae_case(tmp_path)
    return cornac_case(request)


FORMATS = ["grid", "rqvae", "cornac"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_imported_logprobs_match_the_original_model(tmp_path, request, fmt):
    original, ckpt, sids, cfg = make_case(fmt, tmp_path, request)
    out = tmp_path / "imported"
    sk.import_teacher(fmt, ckpt, sids, out, config=cfg)
    model, layout = sk.load_teacher(out)
    catalog = sk.SIDCatalog.load(out)
    adapter = adapter_for(model, layout, catalog)
    hist = histories(catalog.num_items, 6, seed=3)
    users = [7 * r + 1 for r in range(6)]
    targets = [(5 * r + 2) % catalog.num_items for r in range(6)]
    ids, mask = layout.encode_histories([[int(catalog.item_ids[i]) for i in h] for h in hist], catalog,
                                        users=users if layout.num_user_tokens else None)
    codes = catalog.codes_of(catalog.item_ids[targets])
    with torch.no_grad():
        ours = adapter.digit_logits(adapter.encode(ids, mask), codes)
        theirs = original(hist, users, targets)
    assert len(ours) == len(theirs) == layout.num_levels
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.log_softmax(-1), b.log_softmax(-1), atol=1e-5, rtol=0)


@pytest.fixture(params=FORMATS)
def imported(request, tmp_path):
    _, ckpt, sids, cfg = make_case(request.param, tmp_path, request)
    sk.import_teacher(request.param, ckpt, sids, tmp_path / "imported", config=cfg)
    model, layout = sk.load_teacher(tmp_path / "imported")
    return model, layout, sk.SIDCatalog.load(tmp_path / "imported")


@pytest.mark.parametrize("renormalize", [True, False])
def test_constrained_decode_equals_the_reference_search_on_its_logits(imported, renormalize):
    """attention_beam_search on the model's own step function == beam_search_reference over the adapter's
    teacher-forced logits of each prefix (a different code path: one decoder pass per prefix).
    renormalize=False: the code bases' own scoring, log-softmax over each digit's head, then the mask."""
    model, layout, catalog = imported
    adapter = adapter_for(model, layout, catalog)
    hist = histories(catalog.num_items, 3, seed=4)
    users = list(range(3)) if layout.num_user_tokens else None
    ids, mask = layout.encode_histories([[int(catalog.item_ids[i]) for i in h] for h in hist], catalog, users=users)
    enc = adapter.encode(ids, mask)

    def step_fn(level, prefixes, parents):
        b, w = prefixes.shape[:2]
        full = torch.cat([prefixes, prefixes.new_zeros(b, w, layout.num_levels - level)], dim=2).reshape(b * w, -1)
        states = type(enc)(states=enc.states.repeat_interleave(w, 0), mask=enc.mask.repeat_interleave(w, 0))
        logits = adapter.digit_logits(states, full)[level].view(b, w, -1)
        return logits if renormalize else logits.log_softmax(-1)

    with torch.no_grad():
        ours = attention_beam_search(model, layout, catalog, ids, mask, beam_size=6, top_n=4, renormalize=renormalize)
        ref = beam_search_reference(step_fn, catalog, batch_size=3, beam_size=6, top_n=4, renormalize=renormalize)
    assert torch.equal(ours.items, ref.items)
    torch.testing.assert_close(ours.scores, ref.scores.float(), atol=1e-5, rtol=0)
    assert set(ours.items.flatten().tolist()) <= set(catalog.item_ids.tolist())


def test_accelerate_generates_catalog_items(imported):
    """accelerate() distils the imported teacher: its generate() names distinct catalog items, and its HF-style
    generate() returns sequences ([decoder start, digits..., EOS]) that decode to those items in score order."""
    model, layout, catalog = imported
    hist = histories(catalog.num_items, 64, seed=0)
    users = list(range(64)) if layout.num_user_tokens else None
    ids, mask = layout.encode_histories([[int(catalog.item_ids[i]) for i in h] for h in hist], catalog, users=users)
    rows = torch.randint(0, catalog.num_items, (64,), generator=torch.Generator().manual_seed(0))
    examples = Examples(ids, mask, catalog.codes[rows], catalog.item_ids[rows])
    rec = sk.accelerate(model, catalog, examples, layout=layout, epochs=1, **TINY)
    out = rec.generate(ids[:5], mask[:5], beam_size=8, top_n=5)
    assert out.items.shape == (5, 5)
    assert set(out.items.flatten().tolist()) <= set(catalog.item_ids.tolist())
    for row in out.items.tolist():
        assert len(set(row)) == len(row)
    hf = rec.generate(ids[:5], mask[:5], num_beams=8, num_return_sequences=5, return_dict_in_generate=True,
                      output_scores=True)
    assert torch.equal(hf.items, out.items) and torch.equal(hf.scores, out.scores)
    assert_sequences_decode_to_ranked_items(hf, layout, catalog, start=1)
    assert bool((hf.sequences[:, 0] == layout.decoder_start_id).all())
    assert bool((hf.sequences[:, 1 + layout.num_levels] == layout.eos_id).all())
    assert hf.sequences.shape == (5 * 5, layout.num_levels + 2)


# ---- errors ------------------------------------------------------------------------------------------------


def test_grid_bad_keys_name_file_and_key(tmp_path):
    _, ckpt, sids, cfg = grid_case(tmp_path)
    blob = torch.load(ckpt, weights_only=False)
    state = blob["state_dict"]
    del state["decoder.decoder.block.0.layer.1.EncDecAttention.k.weight"]
    torch.save(blob, ckpt)
    with pytest.raises(ArtifactError, match=r"missing key 'state_dict\.decoder\.decoder\.block\.0\.layer\.1\."
                                            r"EncDecAttention\.k\.weight'") as err:
        sk.import_teacher("grid", ckpt, sids, tmp_path / "out", config=cfg)
    assert ckpt.name in str(err.value)
    state["decoder.decoder.block.0.layer.1.EncDecAttention.k.weight"] = torch.zeros(12, 16)
    state["decoder.extra.weight"] = torch.zeros(2)
    torch.save(blob, ckpt)
    with pytest.raises(ArtifactError, match=r"unexpected key 'state_dict\.decoder\.extra\.weight'"):
        sk.import_teacher("grid", ckpt, sids, tmp_path / "out", config=cfg)
    assert not (tmp_path / "out").exists()


def test_grid_config_must_agree_with_the_checkpoint(tmp_path):
    _, ckpt, sids, cfg = grid_case(tmp_path)
    hydra = orig.grid_hydra_config(4, mlp_layers=None)
    with pytest.raises(ValueError, match="mlp_layers=None"):
        sk.import_teacher("grid", ckpt, sids, tmp_path / "out", config=hydra)
    hydra = orig.grid_hydra_config(4)
    hydra["model"]["huggingface_model"]["config"]["num_heads"] = 4
    with pytest.raises(ValueError, match="encoder num_heads=4 disagrees"):
        sk.import_teacher("grid", ckpt, sids, tmp_path / "out", config=hydra)


def test_rqvae_missing_key_names_file_and_key(tmp_path):
    _, ckpt, _, _ = rqvae_case(tmp_path)
    blob = torch.load(ckpt, weights_only=False)
    del blob["model"]["_orig_mod.bos_token"]
    torch.save(blob, ckpt)
    with pytest.raises(ArtifactError, match=r"missing key 'model\._orig_mod\.bos_token'") as err:
        sk.import_teacher("rqvae", ckpt, None, tmp_path / "out")
    assert ckpt.name in str(err.value)


def test_digit_head_teacher_directory_corruption(tmp_path):
    _, path, _, _ = rqvae_case(tmp_path)
    out = tmp_path / "imported"
    sk.import_teacher("rqvae", path, None, out)
    from sidmlp_kernels.io import load_tensors, save_tensors

    tensors = load_tensors(out / "model.safetensors")
    del tensors["bos"]
    save_tensors(tensors, out / "model.safetensors")
    with pytest.raises(ArtifactError, match=r"model\.safetensors.*missing key 'bos'"):
        sk.load_teacher(out)
    (out / "digit_heads.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="digit_heads.json"):
        sk.load_teacher(out)


def test_cli_imports_a_grid_run(tmp_path, capsys):
    from sidmlp_kernels.cli import main

    _, ckpt, sids, cfg = grid_case(tmp_path)
    out = tmp_path / "out"
    assert main(["import", "--format", "grid", "--checkpoint", str(ckpt), "--sids", str(sids), "--config", str(cfg),
                 "--out", str(out)]) == 0
    model, layout = sk.load_teacher(out)
    assert sk.SIDCatalog.load(out).num_items == 30 and layout.num_levels == 4
    assert main(["import", "--format", "grid", "--checkpoint", str(ckpt), "--sids", str(sids), "--num-heads", "2",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "do not apply" in capsys.readouterr().err


def test_rqvae_items_sharing_a_sid_import_as_one_to_many(tmp_path):
    """RQ-VAE-Recommender strips the dedup digit, so items can share a SID: the catalog is one-to-many
    and the ranked output lists every item of a SID (docs/architecture.md, "Shared SIDs")."""
    k, levels = 6, 3
    codes = unique_codes(20, k, levels, seed=1)
    codes = np.concatenate([codes, codes[[3, 7, 7]]])  # items 20, 21, 22 share the SIDs of items 3, 7, 7
    codebooks = torch.as_tensor(codes)
    torch.manual_seed(1)
    model = orig.RqvaeModel(codebooks, levels, k, num_user_bins=4).eval()
    out = tmp_path / "imported"
    sk.import_teacher("rqvae", orig.write_rqvae(tmp_path, model), None, out)
    catalog = sk.SIDCatalog.load(out)
    assert catalog.shares_sids and catalog.num_items == 20 and catalog.num_all_items == 23
    import json

    keys = json.loads((out / "item_keys.json").read_text())
    assert keys["item_ids"] == list(range(23)) and len(keys["keys"]) == 23
    teacher, layout = sk.load_teacher(out)
    ids, mask = layout.encode_histories([[1, 2], [5]], catalog, users=[0, 1] if layout.num_user_tokens else None)
    with torch.no_grad():
        res = sk.constrained_generate(teacher, catalog, ids, mask, num_beams=20, num_return_sequences=20,
                                      layout=layout, return_dict_in_generate=True, output_scores=True)
    assert_sequences_decode_to_ranked_items(res, layout, catalog, start=1)  # one sequence per SID
    for row in res.items.tolist():
        real = [i for i in row if i >= 0]
        assert sorted(real) == list(range(23))  # every SID ranked: every item listed once
        assert real.index(20) == real.index(3) + 1  # a SID's items sit together, in ascending id
        assert real.index(21) == real.index(7) + 1 and real.index(22) == real.index(7) + 2
