"""Triton kernels for the GPU decoding path (DESIGN.md section 5).

Without CUDA the kernels run in Triton's CPU interpreter, which must be chosen
before any @triton.jit function is defined, hence the environment default here.
An explicit TRITON_INTERPRET in the environment always wins.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .fused_step import (  # noqa: E402  (must follow the interpreter switch)
    HAS_TRITON,
    folded_logits_reference,
    fused_step,
    fused_step_reference,
)

__all__ = ["HAS_TRITON", "folded_logits_reference", "fused_step", "fused_step_reference"]
