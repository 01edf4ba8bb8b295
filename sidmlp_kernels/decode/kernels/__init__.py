"""Triton kernels for the GPU decoding path (docs/architecture.md, "Fast paths").

Without CUDA the kernels run only in Triton's CPU interpreter, which Triton picks
when a kernel is defined: set TRITON_INTERPRET=1 in the environment before this
package (or triton) is imported. The library never sets it: it is process-wide.
"""

from .fused_step import (
    HAS_TRITON,
    folded_logits_reference,
    fused_step,
    fused_step_reference,
)

__all__ = ["HAS_TRITON", "folded_logits_reference", "fused_step", "fused_step_reference"]
