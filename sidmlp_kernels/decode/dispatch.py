"""Which decoding backend runs where (docs/architecture.md, "Backends"): the one place that decides.

    reference  the plain-PyTorch reference (decode/reference.py), runs everywhere.
    cpu        the C++/CUDA extension's constrained index ops (decode/constrained.py).
    triton     the fused Triton step (decode/kernels) + the extension's index ops; CUDA, or
               CPU tensors under TRITON_INTERPRET=1 set by the user before triton is imported.

The environment variable SIDMLP_BACKEND (one of BACKENDS; unset = automatic) forces one.
Automatic: CUDA tensors -> triton, CPU tensors -> cpu, and the reference when those cannot
run, with one warning per process on the "sidmlp_kernels" logger. A search over an arbitrary
logits StepFn has no fused kernel, so there 'cpu' and 'triton' both mean the index ops.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Optional, Union

import torch
from ..errors import InvalidInput

try:
    from .. import _C  # registers torch.ops.sidmlp.*

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as err:  # extension not built
    _C = None
    _IMPORT_ERROR = err

__all__ = ["BACKENDS", "BACKEND_ENV", "has_extension", "has_cuda_extension", "select_backend"]

BACKENDS = ("reference", "cpu", "triton")
BACKEND_ENV = "SIDMLP_BACKEND"
logger = logging.getLogger("sidmlp_kernels")

_FALLBACK_LOGGED = False


def has_extension() -> bool:
    """True when the compiled extension sidmlp_kernels._C imported."""
    return _C is not None


def has_cuda_extension() -> bool:
    """True when the extension was compiled with its CUDA ops."""
    return _C is not None and bool(_C.compiled_with_cuda())


def require_extension() -> None:
    """Raise RuntimeError (how to build it, and why the import failed) unless the extension is built."""
    if _C is None:
        raise RuntimeError(
            "sidmlp_kernels._C is not built; build it with "
            f"`pip install --no-build-isolation -e .` (import error: {_IMPORT_ERROR})"
        )


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _unavailable(name: str, device: torch.device) -> Optional[str]:
    """Why backend `name` cannot run on `device` (None when it can)."""
    if name == "reference":
        return None
    if not has_extension():
        return "the C++ extension sidmlp_kernels._C is not built (build it with `pip install --no-build-isolation -e .`)"
    if device.type == "cuda" and not has_cuda_extension():
        return "sidmlp_kernels._C was built without CUDA ops (rebuild it on a machine with the CUDA toolkit)"
    if device.type not in ("cpu", "cuda"):
        return f"device type {device.type!r} is not supported (cpu or cuda)"
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        # Triton picks its interpreter when a kernel is defined; the library never sets it.
        if device.type == "cpu" and not _interpreting():
            return "CPU tensors need TRITON_INTERPRET=1 set before triton is imported"
    return None


def select_backend(
    device: Union[str, torch.device], requested: Optional[str] = None, *, step_fn: bool = False
) -> str:
    """The decoding backend for tensors on `device`: 'reference', 'cpu' or 'triton'.

    Precedence: `requested`, then SIDMLP_BACKEND, then the automatic choice. A named backend
    that cannot run raises RuntimeError saying why; an automatic fall back to 'reference'
    logs one warning per process. step_fn=True: for a search over an arbitrary logits StepFn,
    where 'triton' means the same as 'cpu' (the index ops); the answer is 'reference' or 'cpu'.
    """
    global _FALLBACK_LOGGED
    device = torch.device(device)
    source, choice = "backend", requested
    if choice is None:
        source, choice = BACKEND_ENV, os.environ.get(BACKEND_ENV, "").strip() or None
    if choice is not None:
        if not isinstance(choice, str) or choice.strip().lower() not in BACKENDS:
            raise InvalidInput(f"{source} must be one of {', '.join(map(repr, BACKENDS))}; got {choice!r}")
        choice = choice.strip().lower()
        runs = "cpu" if step_fn and choice == "triton" else choice
        why = _unavailable(runs, device)
        if why is not None:
            raise RuntimeError(f"{source}={choice!r} cannot run on {device}: {why}")
        return runs

    auto = "triton" if device.type == "cuda" and not step_fn else "cpu"
    why = _unavailable(auto, device)
    if why is None:
        return auto
    if not _FALLBACK_LOGGED:
        _FALLBACK_LOGGED = True
        logger.warning(
            "sidmlp_kernels: decoding on the slow PyTorch reference backend because %s; "
            "set %s=reference to choose it explicitly",
            why,
            BACKEND_ENV,
        )
    return "reference"
