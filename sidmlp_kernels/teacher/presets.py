"""Teacher model sizes (plain data: the CLI reads them without importing torch)."""

from __future__ import annotations

from typing import Any

# TIGER paper: 4+4 layers, d_model 128, d_ff 1024, 6 heads of 64, dropout 0.1, ReLU.
T5_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(num_layers=4, num_decoder_layers=4, d_model=128, d_ff=1024, num_heads=6, d_kv=64),
    "small": dict(num_layers=2, num_decoder_layers=2, d_model=64, d_ff=256, num_heads=4, d_kv=16),
    "tiny": dict(num_layers=1, num_decoder_layers=1, d_model=32, d_ff=64, num_heads=2, d_kv=8),
}



# "base": the full-sequence teacher of the ML-1M benchmark (docs/results/ml-1m-quality.md).
GPT2_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(n_layer=8, n_embd=128, n_inner=1024, n_head=4),
    "base": dict(n_layer=2, n_embd=128, n_inner=512, n_head=4),
    "small": dict(n_layer=2, n_embd=64, n_inner=256, n_head=4),
    "tiny": dict(n_layer=1, n_embd=32, n_inner=64, n_head=2),
}



ARCHS = ("t5", "gpt2", "causal-lm")
