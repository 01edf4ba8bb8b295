"""Where the tests put their tensors: the CPU always, CUDA when the machine has it.

The same parity tests run on both. Without CUDA, the `cuda` variants are deselected by
conftest.py (reported as deselected, never as passed); with CUDA they run the CUDA ops and the
compiled Triton kernel. Triton runs one way per process: in its CPU interpreter
(TRITON_INTERPRET=1, which conftest.py sets when there is no CUDA) or compiled on CUDA, so its
CPU variants carry the `interpreter` marker and are deselected where the interpreter is off.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter in this process."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# The extension's ops: C++ on CPU tensors, the CUDA kernels on CUDA tensors.
OP_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# The fused Triton step: interpreted on CPU tensors, compiled on CUDA tensors.
TRITON_DEVICES = [pytest.param("cpu", marks=pytest.mark.interpreter), pytest.param("cuda", marks=pytest.mark.cuda)]
# Every (decode backend, device) pair: reference and cpu (C++ ops) on CPU tensors, cpu (CUDA
# ops) and triton on CUDA tensors, triton interpreted on CPU tensors.
BACKEND_DEVICES = [
    ("reference", "cpu"),
    ("cpu", "cpu"),
    pytest.param("cpu", "cuda", marks=pytest.mark.cuda, id="cpu-cuda"),
    pytest.param("triton", "cpu", marks=pytest.mark.interpreter, id="triton-interpreter"),
    pytest.param("triton", "cuda", marks=pytest.mark.cuda, id="triton-cuda"),
]


def to_device(value, device):
    """Tensors (also inside lists and tuples) moved to `device`; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def deselected_reason(item) -> str | None:
    """Why this machine cannot run a collected test (None when it can)."""
    if item.get_closest_marker("cuda") is not None and not HAS_CUDA:
        return "cuda: no CUDA device"
    if item.get_closest_marker("interpreter") is not None and not interpreting():
        return "interpreter: TRITON_INTERPRET is off, Triton runs compiled"
    return None
