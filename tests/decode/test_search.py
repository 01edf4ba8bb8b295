"""The one beam-search driver (decode/search.py) with each strategy, and the SIDMLP_BACKEND switch."""

import logging
import os
import subprocess
import sys

import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.data.examples import synthetic_data
from sidmlp_kernels.data.layout import TokenLayout
from sidmlp_kernels.decode import dispatch
from sidmlp_kernels.decode.backends import decode_folded
from sidmlp_kernels.decode.constrained import IndexSteps, constrained_beam_search, index_for
from sidmlp_kernels.decode.dispatch import BACKEND_ENV, select_backend
from sidmlp_kernels.decode.reference import ReferenceSteps, beam_search_reference, exhaustive_search
from sidmlp_kernels.decode.search import beam_search, extend_prefixes
from sidmlp_kernels.teacher.attention_decode import UnconstrainedSteps, attention_beam_search

from tests.teacher.test_attention_decode import inputs, make_model
from tests.decode.test_backends import make_ctx, make_heads
from tests.decode.test_reference import random_catalog, table_logits

STRATEGIES = {
    "reference": lambda fn, cat: ReferenceSteps(fn, cat),
    "index": lambda fn, cat: IndexSteps(index_for(cat), fn),
}


@pytest.fixture
def clean_env(monkeypatch):
    """No backend forced, and the one-per-process fallback warning not yet logged."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setattr(dispatch, "_FALLBACK_LOGGED", False)
    return monkeypatch


# ---- the driver -------------------------------------------------------------------


def test_extend_prefixes_gathers_parent_then_appends_token():
    prefixes = torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    parents = torch.tensor([[1, 1, 0], [0, 1, 1]])
    tokens = torch.tensor([[9, 8, 7], [6, 5, 4]])
    out = extend_prefixes(prefixes, parents, tokens)
    assert out.tolist() == [
        [[3, 4, 9], [3, 4, 8], [1, 2, 7]],
        [[5, 6, 6], [7, 8, 5], [7, 8, 4]],
    ]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("seed, sizes, n", [(0, [4, 5, 3], 30), (1, [3, 3], 9), (2, [7, 2, 5, 3], 60), (3, [5, 4], 1)])
def test_driver_full_beam_equals_exhaustive(strategy, seed, sizes, n):
    cat = random_catalog(seed, n, sizes)
    fn = table_logits(seed, 3, sizes)
    beam = cat.num_items
    out = beam_search(STRATEGIES[strategy](lambda l, p, parents: fn(l, p), cat), 3, beam, beam)
    oracle = exhaustive_search(fn, cat, 3, top_n=beam)
    torch.testing.assert_close(out.scores, oracle.scores)
    assert torch.equal(out.items, oracle.items)


def test_unconstrained_on_a_full_catalog_equals_exhaustive():
    """Where every code combination is an item, allowing every code changes nothing."""
    sizes = [3, 4, 2]
    codes = torch.cartesian_prod(*[torch.arange(k) for k in sizes])
    cat = SIDCatalog.from_codes(torch.arange(codes.shape[0]) * 5, codes, sizes)
    fn = table_logits(7, 2, sizes)
    n = cat.num_items
    out = beam_search(UnconstrainedSteps(lambda l, p, parents: fn(l, p), cat), 2, n, n)
    oracle = exhaustive_search(fn, cat, 2, top_n=n)
    torch.testing.assert_close(out.scores, oracle.scores)
    assert torch.equal(out.items, oracle.items)
    assert out.num_invalid.tolist() == [0, 0]


def test_unconstrained_counts_beams_naming_no_item():
    cat = random_catalog(8, 10, [3, 4])  # at most 10 of the 12 codes are items
    fn = table_logits(8, 2, [3, 4])
    out = beam_search(UnconstrainedSteps(lambda l, p, parents: fn(l, p), cat), 2, 12, 12)
    assert out.num_invalid.tolist() == [12 - cat.num_items] * 2
    assert sorted(out.items[0, : cat.num_items].tolist()) == sorted(cat.item_ids.tolist())


@pytest.mark.parametrize("batch, err", [(0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_driver_checks_batch_size(batch, err):
    cat = random_catalog(9, 20, [4, 3])
    with pytest.raises(err, match="batch_size"):
        beam_search(ReferenceSteps(lambda l, p, q: torch.zeros(p.shape[0], p.shape[1], 4), cat), batch, 3, 2)


# ---- the attention decode on the index path -------------------------------------------


@pytest.fixture(scope="module")
def data():
    catalog, split = synthetic_data((8, 6, 5), num_items=80, num_users=60, seed=0)
    return catalog, split, TokenLayout.for_catalog(catalog)


def count_steps(monkeypatch):
    """Count the beam steps each strategy runs."""
    calls = {"index": 0, "reference": 0}
    for name, cls in (("index", IndexSteps), ("reference", ReferenceSteps)):
        original = cls.step

        def step(self, *args, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(cls, "step", step)
    return calls


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_attention_decode_index_path_equals_reference_path(data, arch, clean_env):
    catalog, _, layout = data
    model = make_model(arch, layout, seed=5)
    ids, mask = inputs(data, n=4)
    calls = count_steps(clean_env)
    fast = attention_beam_search(model, layout, catalog, ids, mask, 7, 5)
    assert calls == {"index": layout.num_levels, "reference": 0}
    clean_env.setenv(BACKEND_ENV, "reference")
    ref = attention_beam_search(model, layout, catalog, ids, mask, 7, 5)
    assert calls == {"index": layout.num_levels, "reference": layout.num_levels}
    assert torch.equal(fast.items, ref.items) and torch.equal(fast.codes, ref.codes)
    torch.testing.assert_close(fast.scores, ref.scores, atol=1e-5, rtol=1e-5)
    assert fast.items.device.type == "cpu"


@pytest.mark.usefixtures("one_thread")
def test_attention_decode_triton_means_index_ops(data, clean_env):
    catalog, _, layout = data
    model = make_model("t5", layout, seed=5)
    ids, mask = inputs(data, n=2)
    calls = count_steps(clean_env)
    clean_env.setenv(BACKEND_ENV, "triton")
    attention_beam_search(model, layout, catalog, ids, mask, 4, 2)
    assert calls == {"index": layout.num_levels, "reference": 0}


# ---- one switch: SIDMLP_BACKEND -------------------------------------------------------


def search(cat, batch=2, beam=5, top_n=2):
    fn = table_logits(31, batch, list(cat.codebook_sizes))
    return constrained_beam_search(lambda l, p, parents: fn(l, p), cat, batch, beam, top_n)


@pytest.mark.parametrize("value", ["ext", "bogus", "cuda"])
def test_bad_backend_value_names_the_variable_and_the_choices(clean_env, data, value):
    catalog, _, layout = data
    clean_env.setenv(BACKEND_ENV, value)
    expected = rf"SIDMLP_BACKEND must be one of 'reference', 'cpu', 'triton'; got '{value}'"
    with pytest.raises(ValueError, match=expected):
        search(random_catalog(31, 40, [4, 3]))
    ids, mask = inputs(data, n=2)
    with pytest.raises(ValueError, match=expected):
        attention_beam_search(make_model("t5", layout), layout, catalog, ids, mask, 4, 2)


def test_old_constrained_variable_is_gone(clean_env):
    cat = random_catalog(32, 40, [4, 3])
    clean_env.setenv("SIDMLP_CONSTRAINED_BACKEND", "bogus")  # once a ValueError; now never read
    calls = count_steps(clean_env)
    search(cat)
    assert calls == {"index": 2, "reference": 0}


def test_forced_reference_is_not_a_fallback(clean_env, caplog):
    cat = random_catalog(33, 40, [4, 3])
    clean_env.setenv(BACKEND_ENV, "reference")
    calls = count_steps(clean_env)
    with caplog.at_level(logging.WARNING, logger="sidmlp_kernels"):
        out = search(cat)
    assert calls == {"index": 0, "reference": 2}
    assert not caplog.records
    clean_env.delenv(BACKEND_ENV)
    fast = search(cat)
    assert torch.equal(out.items, fast.items)


def test_fallback_logs_one_line_per_process(clean_env, caplog):
    clean_env.setattr(dispatch, "has_extension", lambda: False)
    cat = random_catalog(34, 40, [4, 3])
    folded = make_heads(34, [4, 3], 8)
    with caplog.at_level(logging.WARNING, logger="sidmlp_kernels"):
        first = search(cat)
        search(cat)
        decode_folded(folded, make_ctx(34, folded, 2), cat, 4, 2)
    records = [r for r in caplog.records if r.name == "sidmlp_kernels"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "reference" in message and "not built" in message and BACKEND_ENV in message
    fn = table_logits(31, 2, [4, 3])
    ref = beam_search_reference(lambda l, p, parents: fn(l, p), cat, 2, 5, 2)
    assert torch.equal(first.items, ref.items) and torch.equal(first.scores, ref.scores)


def test_forcing_the_extension_without_it_is_a_clear_error(clean_env):
    clean_env.setattr(dispatch, "has_extension", lambda: False)
    for name in ("cpu", "triton"):
        clean_env.setenv(BACKEND_ENV, name)
        with pytest.raises(RuntimeError, match=rf"SIDMLP_BACKEND='{name}'.*not built.*pip install"):
            search(random_catalog(35, 40, [4, 3]))


def test_step_fn_searches_read_triton_as_the_index_ops(clean_env):
    clean_env.delenv("TRITON_INTERPRET", raising=False)
    clean_env.setenv(BACKEND_ENV, "triton")
    assert select_backend("cpu", step_fn=True) == "cpu"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        select_backend("cpu")  # the fused kernel on CPU tensors needs the interpreter


def test_device_is_for_a_catalog_only():
    cat = random_catalog(36, 40, [4, 3])
    with pytest.raises(ValueError, match="device is for a SIDCatalog"):
        constrained_beam_search(lambda l, p, q: torch.zeros(p.shape[0], p.shape[1], 4), index_for(cat), 2, 3, 2,
                                device="cpu")


def test_importing_kernels_leaves_triton_interpret_alone():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import os, sidmlp_kernels.decode.kernels; print(os.environ.get('TRITON_INTERPRET'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"
