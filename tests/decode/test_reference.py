import pytest
import torch

from sidmlp_kernels import SIDCatalog
from sidmlp_kernels.decode.reference import (
    beam_search_reference,
    beam_step_reference,
    exhaustive_search,
    masked_log_softmax,
)
from sidmlp_kernels.decode.types import check_beam_args


def random_catalog(seed, n, sizes):
    g = torch.Generator().manual_seed(seed)
    raw = torch.stack([torch.randint(0, k, (n,), generator=g) for k in sizes], 1)
    codes = torch.unique(raw, dim=0)
    return SIDCatalog.from_codes(torch.arange(codes.shape[0]), codes, sizes)


def table_logits(seed, batch, sizes):
    """A stateless model: logits depend on (user, prefix) through a random hash table."""
    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(batch, 97, k, generator=g) * 2 for k in sizes]

    def prefix_logits(level, prefixes):
        key = torch.zeros(prefixes.shape[:2], dtype=torch.long)
        for j in range(level):
            key = key * 31 + prefixes[:, :, j] + 1
        key = key % 97
        return torch.gather(tables[level], 1, key.unsqueeze(-1).expand(-1, -1, sizes[level]))

    return prefix_logits


def test_masked_log_softmax_no_nan():
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    valid = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_log_softmax(logits, valid)
    assert not torch.isnan(out).any()
    assert torch.isinf(out[1]).all()
    assert torch.exp(out[0]).sum() == pytest.approx(1.0)


def test_step_tie_break_and_dead_beams():
    logits = torch.zeros(1, 2, 3)
    valid = torch.tensor([[[True, True, False], [False, True, False]]])
    scores, parents, tokens = beam_step_reference(logits, torch.tensor([[0.0, 0.0]]), valid, 4)
    # beam 0 has two children at log(1/2), beam 1 one child at 0.
    assert parents[0, :3].tolist() == [1, 0, 0]
    assert tokens[0, :3].tolist() == [1, 0, 1]
    assert scores[0, 3] == float("-inf")


@pytest.mark.parametrize("seed, sizes, n", [(0, [4, 5, 3], 30), (1, [3, 3], 9), (2, [7, 2, 5, 3], 60), (3, [5, 4], 1)])
def test_full_beam_equals_exhaustive(seed, sizes, n):
    cat = random_catalog(seed, n, sizes)
    fn = table_logits(seed, 3, sizes)
    beam = cat.num_items
    out = beam_search_reference(lambda l, p, parents: fn(l, p), cat, 3, beam_size=beam, top_n=beam)
    oracle = exhaustive_search(fn, cat, 3, top_n=beam)
    torch.testing.assert_close(out.scores, oracle.scores)
    assert torch.equal(out.items, oracle.items)
    assert set(out.items[0].tolist()) == set(cat.item_ids.tolist())


def test_small_beam_results_are_catalog_items_and_sorted():
    sizes = [6, 6, 6]
    cat = random_catalog(5, 80, sizes)
    fn = table_logits(5, 4, sizes)
    out = beam_search_reference(lambda l, p, parents: fn(l, p), cat, 4, beam_size=5, top_n=5)
    assert (out.items >= 0).all()
    assert torch.equal(cat.lookup(out.codes.reshape(-1, 3)).reshape(4, 5), out.items)
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    for row in out.items.tolist():
        assert len(set(row)) == len(row)


def test_fewer_items_than_top_n():
    cat = SIDCatalog.from_codes(torch.tensor([7, 8]), torch.tensor([[0, 1], [1, 0]]), [2, 2])
    out = beam_search_reference(lambda l, p, parents: torch.zeros(2, p.shape[1], 2), cat, 2, beam_size=4, top_n=3)
    assert out.items[:, 2].tolist() == [-1, -1]
    assert out.codes[:, 2].tolist() == [[-1, -1], [-1, -1]]
    assert sorted(out.items[0, :2].tolist()) == [7, 8]


@pytest.mark.parametrize("beam, top_n, err", [(0, 1, ValueError), (3, 4, ValueError), (2.0, 1, TypeError), (True, 1, TypeError)])
def test_bad_beam_args(beam, top_n, err):
    with pytest.raises(err):
        check_beam_args(beam, top_n)
