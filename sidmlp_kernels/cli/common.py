"""Helpers shared by the CLI commands."""

from __future__ import annotations

from typing import Optional


def set_threads(n: Optional[int]) -> None:
    """torch's intra-op threads for this process (the CLI owns the process; library code never sets it)."""
    if n:
        import torch

        torch.set_num_threads(int(n))
