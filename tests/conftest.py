import hashlib
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # Without CUDA the triton backend runs only in Triton's CPU interpreter, which Triton
    # picks when a kernel is defined. The library never sets process-wide variables, so the
    # suite does, here: conftest loads before any test module imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Deselect (never pass or skip) the tests this machine cannot run: see tests/devices.py."""
    from tests.devices import deselected_reason

    keep, dropped = [], {}
    for item in items:
        why = deselected_reason(item)
        if why is None:
            keep.append(item)
        else:
            dropped.setdefault(why, []).append(item)
    if dropped:
        config.hook.pytest_deselected(items=[i for group in dropped.values() for i in group])
        items[:] = keep
        config._sidmlp_deselected = {why: len(group) for why, group in dropped.items()}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for why, n in getattr(config, "_sidmlp_deselected", {}).items():
        terminalreporter.write_line(f"deselected {n} tests ({why})")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: extra threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


from sidmlp_kernels.data import embeddings as emb_mod  # noqa: E402  (after the TRITON_INTERPRET default)
from sidmlp_kernels.data import movielens as data_mod  # noqa: E402


class FakeEncoder:
    """Stands in for SentenceTransformer: deterministic vectors from a text hash, counts calls."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts, batch_size=64, show_progress_bar=False, convert_to_numpy=True):
        self.encoded += len(texts)
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=8)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32)


@pytest.fixture
def fake_encoder(monkeypatch):
    enc = FakeEncoder()
    monkeypatch.setattr(emb_mod, "_load_model", lambda name: enc)
    return enc


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """Point the 'ml-100k' loader at 40 fake items and 12 users of 6-10 interactions."""
    d = tmp_path / "fake-ml-100k"
    d.mkdir()
    rng = np.random.default_rng(0)
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{i}\tMovie {i}\t{1980 + i % 30}\t{['Drama', 'Comedy', 'Action'][i % 3]}" for i in range(1, 41)]
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, 13):
        for t, i in enumerate(rng.choice(np.arange(1, 41), size=rng.integers(6, 11), replace=False)):
            inter.append(f"{u}\t{i}\t4\t{1000 * u + t}")
    (d / "ml-100k.item").write_text("\n".join(items) + "\n")
    (d / "ml-100k.inter").write_text("\n".join(inter) + "\n")
    monkeypatch.setattr(data_mod, "_dataset_dir", lambda name: d)
    return d
