"""The device markers (tests/devices.py): a test this machine cannot run is deselected, never passed."""

import pytest

from tests import devices


class FakeItem:
    def __init__(self, *markers):
        self.markers = set(markers)

    def get_closest_marker(self, name):
        return name if name in self.markers else None


@pytest.mark.parametrize("has_cuda, interpret, marker, runs", [
    (False, "1", "cuda", False),
    (True, "0", "cuda", True),
    (False, "1", "interpreter", True),
    (True, "0", "interpreter", False),
    (True, "", "interpreter", False),
    (False, "1", None, True),
    (True, "0", None, True),
])
def test_deselected_reason(monkeypatch, has_cuda, interpret, marker, runs):
    monkeypatch.setattr(devices, "HAS_CUDA", has_cuda)
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    why = devices.deselected_reason(FakeItem(*([marker] if marker else [])))
    assert (why is None) == runs
    if not runs:
        assert why.startswith(marker)


def test_every_gpu_parameter_is_marked():
    """Each CUDA variant carries the cuda marker and each interpreted Triton variant the interpreter one."""
    params = devices.OP_DEVICES[1:] + devices.TRITON_DEVICES + devices.BACKEND_DEVICES[2:]
    for p in params:
        names = {m.name for m in p.marks}
        assert names == ({"cuda"} if "cuda" in p.values else {"interpreter"}), p
