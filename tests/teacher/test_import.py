"""Importing teachers saved by other code bases (teacher/importers.py).

Each test writes an artifact the way the code base itself saves it: its model class (stood in
for by a module with the same attribute name, so the state_dict keys carry its prefix) around a
random-weight HF T5 in its token layout, `torch.save(model.state_dict())`, its SID file. The
references (token ids, encoder inputs, labels) follow the code bases' sources, not our layout.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

import sidmlp_kernels as sk
from sidmlp_kernels.cli import main
from sidmlp_kernels.data.examples import Examples
from sidmlp_kernels.io import ArtifactError
from sidmlp_kernels.teacher.adapters import T5TeacherAdapter
from sidmlp_kernels.teacher.attention_decode import attention_beam_search
from tests.teacher.test_attention_decode import assert_same_beams, exact_hf

pytestmark = pytest.mark.usefixtures("one_thread")

T5_SIZES = dict(num_layers=2, num_decoder_layers=1, d_model=16, d_ff=24, num_heads=2, d_kv=6)
TINY = dict(head_hidden=16, ffn_dim=16, num_heads=2, batch_size=32)


# ---- ztguo715/SID-MLP (genrec/models/TIGER) ------------------------------------------------

OFFICIAL_CONFIG = dict(T5_SIZES, dropout_rate=0.1, activation_function="relu", feed_forward_proj="relu",
                       n_user_tokens=3, max_item_seq_len=20, num_beams=50, rq_n_codebooks=3, rq_codebook_size=8)


class OfficialTIGER(nn.Module):
    """genrec/models/TIGER/model.py: TIGER holds `self.t5`, a T5ForConditionalGeneration in its tokenizer's ids."""

    def __init__(self, config):
        super().__init__()
        sizes = [config["rq_codebook_size"]] * (config["rq_n_codebooks"] + 1)
        eos = sum(sizes) + 1 + config["n_user_tokens"]  # TIGERTokenizer: base_user_token + n_user_tokens
        self.t5 = T5ForConditionalGeneration(T5Config(
            num_layers=config["num_layers"], num_decoder_layers=config["num_decoder_layers"],
            d_model=config["d_model"], d_ff=config["d_ff"], num_heads=config["num_heads"], d_kv=config["d_kv"],
            dropout_rate=config["dropout_rate"], vocab_size=eos + 1, pad_token_id=0, eos_token_id=eos,
            decoder_start_token_id=0, feed_forward_proj=config["feed_forward_proj"]))


class OfficialTokenizer:
    """TIGERTokenizer's item tokens, inputs and labels (genrec/models/TIGER/tokenizer.py)."""

    def __init__(self, config, item2sem_ids):
        self.sizes = [config["rq_codebook_size"]] * (config["rq_n_codebooks"] + 1)
        offsets = [0]
        for k in self.sizes[:-1]:
            offsets.append(offsets[-1] + k)
        # _sem_ids_to_tokens: "+ 1" as 0 is reserved for padding
        self.item2tokens = {item: [c + offsets[d] + 1 for d, c in enumerate(sem)] for item, sem in item2sem_ids.items()}
        self.base_user_token = sum(self.sizes) + 1
        self.n_user_tokens = config["n_user_tokens"]
        self.eos_token = self.base_user_token + self.n_user_tokens
        self.max_item_seq_len = config["max_item_seq_len"]

    def tokenize_once(self, user_id, item_seq, width):
        """_tokenize_once: [user token, item tokens..., eos], padded to `width` items; labels = target + eos."""
        input_ids = [self.base_user_token + user_id % self.n_user_tokens]
        for item in item_seq[:-1][-self.max_item_seq_len:]:
            input_ids.extend(self.item2tokens[item])
        input_ids.append(self.eos_token)
        total = width * len(self.sizes) + 2
        n = min(len(item_seq) - 1, self.max_item_seq_len)
        mask = [1] * (len(self.sizes) * n + 2) + [0] * (total - len(self.sizes) * n - 2)
        return input_ids + [0] * (total - len(input_ids)), mask, self.item2tokens[item_seq[-1]] + [self.eos_token]


def official_sem_ids(n_items, seed=0):
    """_extend_semantic_ids: 3 codes plus dedup = the count of items sharing them so far (from 1)."""
    rng = np.random.default_rng(seed)
    seen, out = {}, {}
    for i in range(n_items):
        prefix = tuple(int(c) for c in rng.integers(0, 3, size=3))  # few prefixes: collisions happen
        seen[prefix] = seen.get(prefix, 0) + 1
        out[f"B0{i:05d}"] = [*prefix, seen[prefix]]
    return out


def write_official(tmp_path, config=OFFICIAL_CONFIG, n_items=40, seed=0, state_fn=None):
    torch.manual_seed(seed)
    model = OfficialTIGER(config).eval()
    state = model.state_dict()
    if state_fn is not None:
        state = state_fn(state)
    ckpt = tmp_path / "TIGER-AmazonReviews2023-category_Toys.pth"
    torch.save(state, ckpt)
    sem_ids = official_sem_ids(n_items, seed)
    sids = tmp_path / "Toys_sentence-t5-base_8,8,8,8.sem_ids"
    sids.write_text(json.dumps(sem_ids))
    cfg = tmp_path / "config.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(config))
    return model, sem_ids, ckpt, sids, cfg


# ---- XiaoLongtaoo/TIGER (model/main.py, model/dataset.py, model/dataloader.py) -------------

XLT_CONFIG = dict(T5_SIZES, dropout_rate=0.1, vocab_size=1025, pad_token_id=0, eos_token_id=0,
                  feed_forward_proj="relu", max_len=6)


class XltTIGER(nn.Module):
    """model/main.py: TIGER holds `self.model`; decoder_start_token_id = pad_token_id."""

    def __init__(self, config):
        super().__init__()
        self.model = T5ForConditionalGeneration(T5Config(
            num_layers=config["num_layers"], num_decoder_layers=config["num_decoder_layers"],
            d_model=config["d_model"], d_ff=config["d_ff"], num_heads=config["num_heads"], d_kv=config["d_kv"],
            dropout_rate=config["dropout_rate"], vocab_size=config["vocab_size"],
            pad_token_id=config["pad_token_id"], eos_token_id=config["eos_token_id"],
            decoder_start_token_id=config["pad_token_id"], feed_forward_proj=config["feed_forward_proj"]))


def xlt_item2code(codes):
    """dataset.item2code: row i is item i + 1, tokens c + i * 256 + 1."""
    return {index + 1: [c + i * 256 + 1 for i, c in enumerate(code)] for index, code in enumerate(codes.tolist())}


def xlt_batch(item_to_code, histories, targets, max_len):
    """process_data + pad_or_truncate (left pad with item 0) + collate_fn (mask = token != 0)."""
    rows = []
    for history in histories:
        padded = history[-max_len:] if len(history) > max_len else [0] * (max_len - len(history)) + history
        rows.append([t for x in padded for t in item_to_code.get(x, [0] * 4)])
    ids = torch.tensor(rows)
    return ids, (ids != 0).long(), torch.tensor([item_to_code[t] for t in targets])


def write_xlt(tmp_path, n_items=40, seed=0):
    torch.manual_seed(seed)
    model = XltTIGER(XLT_CONFIG).eval()
    ckpt = tmp_path / "tiger.pth"
    torch.save(model.state_dict(), ckpt)
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, 256, size=(n_items, 4)), axis=0)
    rng.shuffle(codes)
    sids = tmp_path / "Beauty_t5_rqvae.npy"
    np.save(sids, codes)
    return model, codes, ckpt, sids


# ---- helpers ---------------------------------------------------------------------------------


def random_histories(n_items, n, seed, first_id=1, longest=5):
    g = torch.Generator().manual_seed(seed)
    return [[first_id + int(i) for i in torch.randint(0, n_items, (int(torch.randint(1, longest + 1, (1,),
                                                                                       generator=g)),), generator=g)]
            for _ in range(n)]


def assert_same_digit_logprobs(adapter, original, ids, mask, labels, codes, digit_ranges):
    """Our adapter's per-digit logits vs the original model's teacher-forced forward on the same inputs."""
    with torch.no_grad():
        ours = adapter.digit_logits(adapter.encode(ids, mask), codes)
        theirs = original(input_ids=ids, attention_mask=mask, labels=labels).logits
        full = adapter.model(input_ids=ids, attention_mask=mask, labels=labels).logits
    torch.testing.assert_close(full.log_softmax(-1), theirs.log_softmax(-1), atol=1e-5, rtol=0)
    for level, (start, stop) in enumerate(digit_ranges):
        torch.testing.assert_close(ours[level], theirs[:, level, start:stop], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours[level].log_softmax(-1), theirs[:, level, start:stop].log_softmax(-1),
                                   atol=1e-5, rtol=0)


# ---- sidmlp-official --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("official")
    original, sem_ids, ckpt, sids, cfg = write_official(tmp)
    out = tmp / "imported"
    sk.import_teacher("sidmlp-official", ckpt, sids, out, config=cfg)
    return original, sem_ids, out


def official_inputs(original_config, sem_ids, out, n=6, seed=1):
    """The same histories as the original tokenizer encodes them and as our layout does."""
    tok = OfficialTokenizer(original_config, sem_ids)
    keys = json.loads((out / "item_keys.json").read_text())
    id_of = dict(zip(keys["keys"], keys["item_ids"]))
    names = list(sem_ids)
    seqs = [[names[i - 1] for i in h] + [names[(7 * r) % len(names)]]
            for r, h in enumerate(random_histories(len(names), n, seed))]
    width = max(len(s) - 1 for s in seqs)
    users = [3 * r + 1 for r in range(n)]
    rows = [tok.tokenize_once(u, s, width) for u, s in zip(users, seqs)]
    ids, mask, labels = (torch.tensor([r[k] for r in rows]) for k in range(3))
    histories = [[id_of[x] for x in s[:-1]] for s in seqs]
    targets = [id_of[s[-1]] for s in seqs]
    return ids, mask, labels, histories, users, targets, tok


def test_official_logprobs_match_the_original_model(official):
    original, sem_ids, out = official
    model, layout = sk.load_teacher(out)
    catalog = sk.SIDCatalog.load(out)
    assert sk.SIDCatalog.load(out / "catalog") == catalog
    assert layout.kind == "sidmlp-official" and layout.num_user_tokens == OFFICIAL_CONFIG["n_user_tokens"]
    ids, mask, labels, histories, users, targets, tok = official_inputs(OFFICIAL_CONFIG, sem_ids, out)
    # Our layout encodes the histories exactly as the original tokenizer does.
    ours_ids, ours_mask = layout.encode_histories(histories, catalog, users=users)
    assert torch.equal(ours_ids, ids) and torch.equal(ours_mask, mask)
    # Our catalog's codes are the original's tokens read back through our layout.
    codes = catalog.codes_of(torch.tensor(targets))
    assert layout.codes_to_tokens(codes).tolist() == [row[:-1] for row in labels.tolist()]
    ranges = [(1 + sum(tok.sizes[:d]), 1 + sum(tok.sizes[: d + 1])) for d in range(len(tok.sizes))]
    assert_same_digit_logprobs(T5TeacherAdapter(model, layout, catalog), original.t5, ids, mask, labels, codes,
                               ranges)


# ---- tiger-xlt -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xlt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xlt")
    original, codes, ckpt, sids = write_xlt(tmp)
    out = tmp / "imported"
    # No config file: XiaoLongtaoo/TIGER takes argparse flags; the activation is its --feed_forward_proj.
    sk.import_teacher("tiger-xlt", ckpt, sids, out, feed_forward_proj="relu")
    return original, codes, out


def xlt_inputs(codes, n=6, seed=1):
    n_items = codes.shape[0]
    histories = random_histories(n_items, n, seed)
    targets = [1 + (7 * r) % n_items for r in range(n)]
    width = max(len(h) for h in histories)
    return histories, targets, *xlt_batch(xlt_item2code(codes), histories, targets, width)


def test_xlt_logprobs_match_the_original_model(xlt):
    original, codes, out = xlt
    model, layout = sk.load_teacher(out)
    catalog = sk.SIDCatalog.load(out)
    assert layout.kind == "tiger-xlt" and model.config.vocab_size == 1025
    histories, targets, ids, mask, labels = xlt_inputs(codes)
    ours_ids, ours_mask = layout.encode_histories(histories, catalog, padding_side="left")
    assert torch.equal(ours_ids, ids) and torch.equal(ours_mask, mask)
    target_codes = catalog.codes_of(torch.tensor(targets))
    assert torch.equal(layout.codes_to_tokens(target_codes), labels)
    ranges = [(1 + 256 * d, 1 + 256 * (d + 1)) for d in range(4)]
    assert_same_digit_logprobs(T5TeacherAdapter(model, layout, catalog), original.model, ids, mask, labels,
                               target_codes, ranges)


# ---- both formats: decoding and acceleration -------------------------------------------------

FORMATS = ["sidmlp-official", "tiger-xlt"]


def imported_case(request, fmt, n, seed):
    """(original T5, imported model, layout, catalog, inputs of n histories built the original code base's way)."""
    if fmt == "sidmlp-official":
        original, sem_ids, out = request.getfixturevalue("official")
        ids, mask, *_ = official_inputs(OFFICIAL_CONFIG, sem_ids, out, n=n, seed=seed)
        original_t5 = original.t5
    else:
        original, codes, out = request.getfixturevalue("xlt")
        _, _, ids, mask, _ = xlt_inputs(codes, n=n, seed=seed)
        original_t5 = original.model
    model, layout = sk.load_teacher(out)
    return original_t5, model, layout, sk.SIDCatalog.load(out), ids, mask


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("beam, top_n", [(1, 1), (6, 4)])
def test_unconstrained_decode_agrees_with_hf_on_the_original(request, fmt, beam, top_n):
    original, model, layout, catalog, ids, mask = imported_case(request, fmt, n=4, seed=2)
    ours = attention_beam_search(model, layout, catalog, ids, mask, beam, top_n, constrained=False)
    theirs = exact_hf(original, layout, catalog, ids, mask, beam, top_n)
    assert_same_beams(ours, theirs)
    assert torch.equal(ours.items, theirs.items)


@pytest.mark.parametrize("fmt", FORMATS)
def test_accelerate_generates_catalog_items(request, fmt):
    """accelerate() distils the imported teacher; its generate() names only catalog items, distinct per row."""
    _, model, layout, catalog, ids, mask = imported_case(request, fmt, n=5, seed=3)
    hist = random_histories(catalog.num_items, 96, seed=0)
    hist = [[int(catalog.item_ids[i - 1]) for i in h] for h in hist]
    users = list(range(len(hist))) if layout.num_user_tokens else None
    tids, tmask = layout.encode_histories(hist, catalog, users=users)
    rows = torch.randint(0, catalog.num_items, (len(hist),), generator=torch.Generator().manual_seed(0))
    examples = Examples(tids, tmask, catalog.codes[rows], catalog.item_ids[rows])
    rec = sk.accelerate(model, catalog, examples, layout=layout, epochs=1, **TINY)
    out = rec.generate(ids, mask, beam_size=8, top_n=5)
    assert out.items.shape == (ids.shape[0], 5)
    assert set(out.items.flatten().tolist()) <= set(catalog.item_ids.tolist())
    for row in out.items.tolist():
        assert len(set(row)) == len(row)


# ---- errors ----------------------------------------------------------------------------------


def _drop(key):
    return lambda state: {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("state_fn, match", [
    (_drop("t5.encoder.block.1.layer.1.layer_norm.weight"), r"missing key 't5\.encoder\.block\.1\.layer\.1\.layer_norm"),
    (lambda s: {k[len("t5."):]: v for k, v in s.items()}, r"key 'shared\.weight' lacks the prefix 't5\.'"),
    (lambda s: dict(s, **{"t5.encoder.extra.weight": torch.zeros(2)}), r"unexpected key 't5\.encoder\.extra\.weight'"),
    (lambda s: dict(s, **{"t5.decoder.block.0.layer.2.DenseReluDense.wo.weight": torch.zeros(16, 5)}),
     r"key 't5\.decoder\.block\.0\.layer\.2\.DenseReluDense\.wo\.weight' has shape \(16, 5\)"),
])
def test_bad_checkpoint_names_file_and_key(tmp_path, state_fn, match):
    _, _, ckpt, sids, cfg = write_official(tmp_path, state_fn=state_fn)
    with pytest.raises(ArtifactError, match=match) as err:
        sk.import_teacher("sidmlp-official", ckpt, sids, tmp_path / "out", config=cfg)
    assert ckpt.name in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_or_contradicting_settings(tmp_path):
    _, _, ckpt, sids = write_xlt(tmp_path)
    with pytest.raises(ValueError, match=r"feed_forward_proj .*--feed-forward-proj.*--config"):
        sk.import_teacher("tiger-xlt", ckpt, sids, tmp_path / "out")
    with pytest.raises(ValueError, match=r"num_heads=3 .*implies num_heads=2"):
        sk.import_teacher("tiger-xlt", ckpt, sids, tmp_path / "out", feed_forward_proj="relu", num_heads=3)
    with pytest.raises(ValueError, match=r"gated-gelu.*plain"):
        sk.import_teacher("tiger-xlt", ckpt, sids, tmp_path / "out", feed_forward_proj="gated-gelu")
    with pytest.raises(ValueError, match="format must be one of"):
        sk.import_teacher("no-such-format", ckpt, sids, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown import options"):
        sk.import_teacher("tiger-xlt", ckpt, sids, tmp_path / "out", feed_forward_proj="relu", heads=2)
    assert not (tmp_path / "out").exists()


def test_official_user_count_must_fit_the_vocabulary(tmp_path):
    _, _, ckpt, sids, cfg = write_official(tmp_path)
    with pytest.raises(ValueError, match="n_user_tokens=5 .*implies n_user_tokens=3"):
        sk.import_teacher("sidmlp-official", ckpt, sids, tmp_path / "out", config=cfg, n_user_tokens=5)


def test_official_dedup_reaching_the_codebook_size_is_rejected(tmp_path):
    """The code base's own check lets dedup == codebook size, whose token is the first user token."""
    _, sem_ids, ckpt, sids, cfg = write_official(tmp_path)
    first = next(iter(sem_ids))
    sids.write_text(json.dumps(dict(sem_ids, **{first: sem_ids[first][:3] + [OFFICIAL_CONFIG["rq_codebook_size"]]})))
    with pytest.raises(ArtifactError, match="digit 3 holds code 8.*first user token"):
        sk.import_teacher("sidmlp-official", ckpt, sids, tmp_path / "out", config=cfg)


def test_cli_import(tmp_path, capsys):
    _, codes, ckpt, sids = write_xlt(tmp_path)
    cfg = tmp_path / "args.json"
    cfg.write_text(json.dumps(XLT_CONFIG))
    out = tmp_path / "out"
    assert main(["import", "--format", "tiger-xlt", "--checkpoint", str(ckpt), "--sids", str(sids),
                 "--config", str(cfg), "--out", str(out)]) == 0
    model, layout = sk.load_teacher(out)
    assert layout.kind == "tiger-xlt" and sk.SIDCatalog.load(out).num_items == codes.shape[0]
    assert main(["import", "--format", "tiger-xlt", "--checkpoint", str(ckpt), "--sids", str(sids),
                 "--num-heads", "3", "--config", str(cfg), "--out", str(tmp_path / "o2")]) == 2
    assert "num_heads=3" in capsys.readouterr().err


def test_prepare_from_the_sid_file_then_import_fits_the_dataset(tmp_path, fake_dataset, capsys):
    """`prepare --sids` + `import --prepared`: the dataset's items get the file's codes by raw id, and the
    imported teacher carries that catalog, so load_teacher(catalog=prepared.catalog) accepts it."""
    from sidmlp_kernels.data.prepare import load_prepared

    model, sem_ids, ckpt, _, cfg = write_official(tmp_path, n_items=45)
    rng = np.random.default_rng(3)
    values = list(sem_ids.values())
    raw = [str(i) for i in rng.permutation(np.arange(1, 46))]  # file order != dataset order; 5 extra items
    sids = tmp_path / "by_raw_id.sem_ids"
    sids.write_text(json.dumps(dict(zip(raw, values))))
    prep = tmp_path / "prep"
    assert main(["prepare", "--dataset", "ml-100k", "--out", str(prep), "--sids", str(sids),
                 "--codebook-size", "8"]) == 0
    p = load_prepared(prep)
    by_raw = dict(zip(raw, values))
    for item, raw_id in enumerate(p.data.raw_item_ids):
        assert p.catalog.codes[item].tolist() == by_raw[raw_id]
    assert p.config["sids"] == str(sids) and p.config["embedding_model"] is None
    out = tmp_path / "teacher"
    assert main(["import", "--format", "sidmlp-official", "--checkpoint", str(ckpt), "--sids", str(sids),
                 "--config", str(cfg), "--prepared", str(prep), "--out", str(out)]) == 0
    teacher, layout = sk.load_teacher(out, catalog=p.catalog)  # refused if the catalogs differed
    assert sk.SIDCatalog.load(out / "catalog").fingerprint() == p.catalog.fingerprint()
    keys = json.loads((out / "item_keys.json").read_text())
    assert keys["keys"] == list(p.data.raw_item_ids)
    # The imported weights are the original's.
    for name, value in model.t5.state_dict().items():
        torch.testing.assert_close(teacher.state_dict()[name], value, rtol=0, atol=0)
    # A prepared dataset built from other codes is refused, naming the fix.
    other = tmp_path / "other.sem_ids"
    other.write_text(json.dumps(dict(zip(raw, values[::-1]))))
    with pytest.raises(ValueError, match="does not hold the codes of"):
        sk.import_teacher("sidmlp-official", ckpt, other, tmp_path / "t2", config=cfg, prepared=prep)
    with pytest.raises(ValueError, match="no SID for 40 of the dataset's 40 items"):
        sk.import_teacher("sidmlp-official", ckpt, tmp_path / "Toys_sentence-t5-base_8,8,8,8.sem_ids",
                          tmp_path / "t3", config=cfg, prepared=prep)


def test_prepare_from_a_sid_file_errors(tmp_path, fake_dataset):
    from sidmlp_kernels.data.prepare import prepare

    sids = tmp_path / "few.sem_ids"
    sids.write_text(json.dumps({"1": [0, 0, 0, 1], "2": [0, 0, 0, 2]}))
    with pytest.raises(ArtifactError, match=r"no SID for 38 of the dataset's 40 items.*raw ids"):
        prepare("ml-100k", tmp_path / "p1", codebook_size=8, sids=sids)
    with pytest.raises(ValueError, match=r"codebook_size \(--codebook-size\).*not 'auto'"):
        prepare("ml-100k", tmp_path / "p2", codebook_size="auto", sids=sids)
    with pytest.raises(FileNotFoundError, match="no SID file"):
        prepare("ml-100k", tmp_path / "p3", codebook_size=8, sids=tmp_path / "missing.sem_ids")
    with pytest.raises(ValueError, match="SID file format must be one of"):
        prepare("ml-100k", tmp_path / "p4", codebook_size=8, sids=sids, sids_format="grid")
    assert not (tmp_path / "p3").exists() and not (tmp_path / "p4").exists()  # checked before writing
