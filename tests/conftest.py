import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without CUDA the triton backend runs only in Triton's CPU interpreter, which Triton
    # picks when a kernel is defined. The library never sets process-wide variables, so the
    # suite does, here: conftest loads before any test module imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core box: extra threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
