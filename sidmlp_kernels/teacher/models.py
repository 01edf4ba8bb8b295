"""TIGER teacher models: HF T5 (or GPT-2) over SID tokens: build from a preset, the training loss,
save/load a teacher directory.

A teacher directory (`save_teacher`) holds the HF model (save_pretrained: config.json +
model.safetensors), layout.json and teacher.json (format version, arch, preset, validation
metrics). `load_teacher(dir)` reads it, or DIR/best/ of a training run directory (teacher/train.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.catalog import SIDCatalog
from ..data.layout import TokenLayout
from ..training import forked_rng
from ..io import ArtifactError, load_tensors, read_json, read_meta, write_meta
from .adapters import PROMPT_FORMATS, causal_prompt, check_model_layout, left_positions, prompt_format
from .digit_heads import CONFIG_FILE as DIGIT_HEADS_FILE, DigitHeadsT5, load_digit_heads
from .presets import ARCHS, GPT2_PRESETS, T5_PRESETS
from ..errors import InvalidInput

__all__ = [
    "build_gpt2_teacher",
    "build_t5_teacher",
    "load_teacher",
    "save_teacher",
    "teacher_loss",
]

FORMAT_VERSION = 1
_FORMAT = "sidmlp-teacher"


def _preset(table: dict[str, dict[str, Any]], preset: str) -> dict[str, Any]:
    if preset not in table:
        raise InvalidInput(f"preset must be one of {sorted(table)}, got {preset!r}")
    return dict(table[preset])


def _seeded(build: Callable[[], nn.Module], seed: Optional[int]) -> nn.Module:
    """build() in eval mode (HF's from_pretrained convention); with a seed, its initial weights come
    from that seed in a forked RNG, so the caller's global RNG state is left as it was."""
    if seed is None:
        return build().eval()
    with forked_rng(seed):
        return build().eval()


def build_t5_teacher(layout: TokenLayout, preset: str = "paper", seed: Optional[int] = None, **overrides) -> nn.Module:
    """A fresh T5ForConditionalGeneration over the layout's tokens (pad, EOS, decoder start from it), in eval mode."""
    from transformers import T5Config, T5ForConditionalGeneration

    kwargs = dict(
        vocab_size=layout.vocab_size,
        dropout_rate=0.1,
        feed_forward_proj="relu",
        pad_token_id=layout.pad_id,
        eos_token_id=layout.eos_id,
        decoder_start_token_id=layout.decoder_start_id,
    )
    kwargs.update(_preset(T5_PRESETS, preset))
    kwargs.update(overrides)
    return _seeded(lambda: T5ForConditionalGeneration(T5Config(**kwargs)), seed)


def build_gpt2_teacher(
    layout: TokenLayout,
    preset: str = "small",
    max_positions: int = 1024,
    seed: Optional[int] = None,
    prompt: str = "eos",
    dropout: Optional[float] = None,
    **overrides,
) -> nn.Module:
    """A fresh GPT2LMHeadModel over the layout's tokens, in eval mode.

    prompt="eos": [user, SIDs..., EOS], then the target SID (TIGER's prompt, per-prefix training);
    prompt="items": [user, SIDs...], then the next item's SID (the full-sequence teacher,
    teacher/sequence.py). Recorded as config.sid_prompt. `dropout` sets GPT-2's three dropout rates.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if prompt not in PROMPT_FORMATS:
        raise InvalidInput(f"prompt must be one of {PROMPT_FORMATS}, got {prompt!r}")
    kwargs = dict(
        vocab_size=layout.vocab_size,
        n_positions=max_positions,
        bos_token_id=layout.user_base,
        eos_token_id=layout.eos_id,
        pad_token_id=layout.pad_id,
        sid_prompt=prompt,
    )
    kwargs.update(_preset(GPT2_PRESETS, preset))
    if dropout is not None:
        kwargs.update(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    kwargs.update(overrides)
    return _seeded(lambda: GPT2LMHeadModel(GPT2Config(**kwargs)), seed)


def _arch(model: nn.Module) -> str:
    if isinstance(model, DigitHeadsT5):
        return "digit-heads"
    return "t5" if getattr(model.config, "is_encoder_decoder", False) else "gpt2"


def teacher_loss(
    model: nn.Module,
    layout: TokenLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_codes: torch.Tensor,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the L target SID tokens + EOS (full vocabulary, as TIGER trains;
    no EOS for a decoder-only teacher with prompt format "items")."""
    batch = input_ids.shape[0]
    labels = torch.cat(
        [layout.codes_to_tokens(target_codes), torch.full((batch, 1), layout.eos_id, dtype=torch.long)], dim=1
    ).to(input_ids.device)
    if getattr(model.config, "is_encoder_decoder", False):
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    # Causal LM: [prompt (left padded), t_0 .. t_{L-1}] predicts t_0 .. t_{L-1}, EOS from position T-1 on.
    # A full-sequence teacher (prompt "items") ends no item with EOS: only the L digits are labels.
    ids, mask = causal_prompt(model, layout, input_ids, attention_mask)
    if prompt_format(model) == "items":
        labels = labels[:, :-1]
    t = ids.shape[1]
    full_ids = torch.cat([ids, labels[:, :-1]], dim=1)
    full_mask = torch.cat([mask.long(), torch.ones_like(labels[:, :-1])], dim=1)
    logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=left_positions(full_mask)).logits
    pred = logits[:, t - 1 :]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels.reshape(-1))


# ---- evaluation -----------------------------------------------------------------------


# ---- saving / loading -----------------------------------------------------------------


@contextlib.contextmanager
def _without_hf_progress_bars() -> Iterator[None]:
    """HF's "Loading weights" / "Writing model shards" bars off inside the block, restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_teacher(model: nn.Module, layout: TokenLayout, directory: str | Path, info: Optional[dict] = None) -> None:
    """Write model (safetensors + config), layout.json and teacher.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, DigitHeadsT5):
        model.check_layout(layout)
        model.save(directory)
    else:
        with _without_hf_progress_bars():
            model.save_pretrained(str(directory))
    layout.save(directory / "layout.json")
    write_meta(directory / "teacher.json", _FORMAT, FORMAT_VERSION, {"arch": _arch(model), **(info or {})})


def load_teacher(
    directory: str | Path, device: str | torch.device = "cpu", catalog: Optional[SIDCatalog] = None
) -> tuple[nn.Module, TokenLayout]:
    """Load (model in eval mode, layout) from a run directory (uses best/) or a saved model directory.

    With `catalog`, a teacher trained on another catalog (its recorded fingerprint differs) is a
    ValueError naming both.
    """
    directory = Path(directory)
    if (directory / "best" / "teacher.json").is_file():
        directory = directory / "best"
    meta_path = directory / "teacher.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no teacher in {directory}: expected teacher.json (or best/teacher.json)")
    meta = read_meta(meta_path, _FORMAT, FORMAT_VERSION, required=("arch",),
                     hint="re-create it with `sidmlp train-teacher` (or save_teacher)")
    layout = TokenLayout.load(directory / "layout.json")
    recorded = meta.get("catalog_fingerprint")
    if catalog is not None and recorded is not None and recorded != catalog.fingerprint():
        raise InvalidInput(f"the teacher in {directory} was trained on catalog {recorded}, but this data's catalog is "
                         f"{catalog.fingerprint()} ({catalog}); use the teacher trained on this --prepared directory")
    arch = meta["arch"]
    hint = "re-create it with `sidmlp train-teacher` (or save_teacher)"
    if arch == "digit-heads":
        model = load_digit_heads(directory, hint)
        try:
            model.check_layout(layout)
        except ValueError as err:
            raise ArtifactError(directory / "layout.json", f"does not fit {DIGIT_HEADS_FILE} ({err})", hint) from err
        return model.to(device).eval(), layout
    if arch == "t5":
        from transformers import T5ForConditionalGeneration as cls
    elif arch == "gpt2":
        from transformers import GPT2LMHeadModel as cls
    elif arch == "causal-lm":  # an LLM with SID tokens (teacher/llm_import.py)
        from transformers import AutoModelForCausalLM as cls
    else:
        raise InvalidInput(f"{meta_path} names unknown arch {arch!r}; expected one of {ARCHS}")
    # HF's own errors name neither the file nor the fix: check the two files it reads first.
    read_json(directory / "config.json", hint)
    load_tensors(directory / "model.safetensors", hint)
    with _without_hf_progress_bars():
        try:
            model, report = cls.from_pretrained(str(directory), output_loading_info=True)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
            raise ArtifactError(directory, f"HF {cls.__name__} could not load it ({err})", hint) from err
    # HF fills missing weights with fresh random ones and only warns: a teacher must load whole.
    problems = {k: sorted(map(str, v)) for k, v in report.items() if v and k != "error_msgs"}
    if problems:
        raise ArtifactError(directory / "model.safetensors", f"does not fit config.json: {problems}", hint)
    try:
        check_model_layout(model, layout)
    except ValueError as err:
        raise ArtifactError(directory / "config.json", f"does not fit layout.json ({err})", hint) from err
    return model.to(device).eval(), layout


# ---- training -------------------------------------------------------------------------


# ---- CLI ------------------------------------------------------------------------------


