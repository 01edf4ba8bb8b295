"""Teacher features for distillation: encoder states + mask and teacher-forced per-digit logits.

Extracted once from a frozen teacher (batched, tqdm) and stored as safetensors
shards + a JSON index, so distillation can be rerun (or resumed midway through
extraction) without the teacher.

With `teacher_beam=W`, each example also keeps the teacher's own beam tree: the
teacher's catalog-constrained beam search (width W) runs on the example, and for
every digit l >= 1 the W prefixes it scored and their logits are stored. The
ground-truth path alone supervises one prefix per digit; the beam tree supervises
the prefixes the teacher actually ranks, which is what a top-10 list is made of.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..io import ArtifactError, load_tensors, read_meta, save_tensors, write_meta
from ..errors import InvalidInput

__all__ = ["FeatureStore", "extract_features", "load_features", "encode_in_batches", "teacher_beam_tree",
           "teacher_fingerprint", "teacher_top_items"]

FORMAT_VERSION = 1
_FORMAT = "sidmlp-features"
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class FeatureStore:
    """N examples: states (N, T, D), mask (N, T), input_ids (N, T), teacher logits [(N, K_l)], targets;
    optionally the teacher's beam tree: beam_prefixes[l-1] (N, W, l) and beam_logits[l-1] (N, W, K_l)
    for digits l = 1..L-1."""

    states: torch.Tensor  # storage dtype (float16 by default); batches come out as float32
    mask: torch.Tensor  # bool, True = real token
    input_ids: torch.Tensor  # long, the teacher-layout tokens the states were computed from
    teacher_logits: list[torch.Tensor]  # float32, restricted to digit l's K_l codes
    target_codes: torch.Tensor  # (N, L) long
    target_items: torch.Tensor  # (N,) long
    beam_prefixes: Optional[list[torch.Tensor]] = None  # digits 1..L-1: (N, W, l) codes the teacher's beam scored
    beam_logits: Optional[list[torch.Tensor]] = None  # digits 1..L-1: (N, W, K_l) the teacher's logits there

    def __post_init__(self) -> None:
        n = self.states.shape[0]
        if self.states.dim() != 3 or tuple(self.mask.shape) != tuple(self.states.shape[:2]):
            raise InvalidInput(
                f"states must be (N, T, D) and mask (N, T), got {tuple(self.states.shape)} and {tuple(self.mask.shape)}"
            )
        if tuple(self.input_ids.shape) != tuple(self.mask.shape):
            raise InvalidInput(f"input_ids must be {tuple(self.mask.shape)}, got {tuple(self.input_ids.shape)}")
        if self.target_codes.dim() != 2 or self.target_codes.shape[0] != n:
            raise InvalidInput(f"target_codes must be (N={n}, L), got {tuple(self.target_codes.shape)}")
        if len(self.teacher_logits) != self.target_codes.shape[1]:
            raise InvalidInput(f"need one teacher_logits tensor per digit ({self.target_codes.shape[1]}), got {len(self.teacher_logits)}")
        for l, t in enumerate(self.teacher_logits):
            if t.dim() != 2 or t.shape[0] != n:
                raise InvalidInput(f"teacher_logits[{l}] must be (N={n}, K_{l}), got {tuple(t.shape)}")
        if (self.beam_prefixes is None) != (self.beam_logits is None):
            raise InvalidInput("beam_prefixes and beam_logits go together: give both or neither")
        if self.beam_prefixes is not None:
            levels = self.target_codes.shape[1]
            if len(self.beam_prefixes) != levels - 1 or len(self.beam_logits) != levels - 1:
                raise InvalidInput(f"need beam_prefixes and beam_logits for digits 1..{levels - 1}, got "
                                   f"{len(self.beam_prefixes)} and {len(self.beam_logits)}")
            for l, (p, lg) in enumerate(zip(self.beam_prefixes, self.beam_logits), start=1):
                k = self.teacher_logits[l].shape[1]
                if p.dim() != 3 or p.shape[0] != n or p.shape[2] != l or tuple(lg.shape) != (n, p.shape[1], k):
                    raise InvalidInput(f"beam_prefixes[{l - 1}] must be (N={n}, W, {l}) and beam_logits[{l - 1}] "
                                       f"(N, W, {k}), got {tuple(p.shape)} and {tuple(lg.shape)}")

    def __len__(self) -> int:
        return int(self.states.shape[0])

    @property
    def num_levels(self) -> int:
        """Number of SID digits L."""
        return int(self.target_codes.shape[1])

    @property
    def hidden_size(self) -> int:
        """Width D of the stored encoder states."""
        return int(self.states.shape[2])

    @property
    def teacher_beam(self) -> int:
        """Width W of the stored teacher beam tree (0: ground-truth paths only)."""
        return int(self.beam_prefixes[0].shape[1]) if self.beam_prefixes else 0

    def batch(self, index: torch.Tensor) -> dict:
        """A float32 batch trimmed to its longest row: states, mask, input_ids, teacher_logits, target_codes,
        target_items, and beam_prefixes / beam_logits (lists) when the store holds a beam tree."""
        mask = self.mask[index]
        real = mask.any(dim=0).nonzero().flatten()
        # Rows may be right- or left-padded; keep the column span that holds any real token.
        lo, hi = (int(real.min()), int(real.max()) + 1) if real.numel() else (0, 1)
        out = {
            "states": self.states[index, lo:hi].float(),
            "mask": mask[:, lo:hi],
            "input_ids": self.input_ids[index, lo:hi],
            "teacher_logits": [t[index].float() for t in self.teacher_logits],
            "target_codes": self.target_codes[index],
            "target_items": self.target_items[index],
        }
        if self.beam_prefixes is not None:
            out["beam_prefixes"] = [p[index].long() for p in self.beam_prefixes]
            out["beam_logits"] = [lg[index].float() for lg in self.beam_logits]
        return out

    def with_states(self, states: torch.Tensor) -> "FeatureStore":
        """The same examples with other encoder states (e.g. the MLP encoder's), same (N, T) grid."""
        return dataclasses.replace(self, states=states)

    def subset(self, index: torch.Tensor) -> "FeatureStore":
        """The examples at `index`."""
        beam = {} if self.beam_prefixes is None else {
            "beam_prefixes": [p[index] for p in self.beam_prefixes],
            "beam_logits": [lg[index] for lg in self.beam_logits]}
        return FeatureStore(
            self.states[index], self.mask[index], self.input_ids[index],
            [t[index] for t in self.teacher_logits], self.target_codes[index], self.target_items[index], **beam,
        )


def teacher_fingerprint(adapter) -> str:
    """Short hash of a teacher's code embeddings: tells one trained teacher from another."""
    h = hashlib.sha256()
    for level in range(adapter.layout.num_levels):
        emb = adapter.code_embeddings(level).detach().float().cpu().contiguous()
        h.update(emb.numpy().tobytes())
    return h.hexdigest()[:16]


def _examples_fingerprint(examples) -> str:
    h = hashlib.sha256()
    for t in (examples.input_ids, examples.attention_mask, examples.target_codes, examples.target_items):
        h.update(t.detach().cpu().long().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _pad_to(x: torch.Tensor, t: int, value=0) -> torch.Tensor:
    """Pad dim 1 of x on the right to length t (rows keep their own mask, so placement is free)."""
    if x.shape[1] == t:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, t - x.shape[1]]
    return torch.nn.functional.pad(x, pad, value=value)


def encode_in_batches(
    encoder, examples, batch_size: int = 128, desc: str = "encode", show_progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoder states of every example -> (states (N, T, D) float32, mask (N, T) bool, input_ids (N, T)).

    `encoder(input_ids, attention_mask)` returns an Encoded (a teacher adapter's
    encode or an MLP encoder); each batch is trimmed to its longest row first.
    """
    n, t = examples.input_ids.shape
    states, masks, ids_out = [], [], []
    with torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not show_progress, leave=False):
            ids, am, _, _ = examples.batch(torch.arange(start, min(start + batch_size, n)))
            enc = encoder(ids, am)
            enc_ids = getattr(enc, "input_ids", None)
            states.append(_pad_to(enc.states.float().cpu(), t))
            masks.append(_pad_to(enc.mask.bool().cpu(), t, False))
            ids_out.append(_pad_to((ids if enc_ids is None else enc_ids).long().cpu(), t))
    return torch.cat(states), torch.cat(masks), torch.cat(ids_out)


def _teacher_model(adapter):
    model = getattr(adapter, "model", None)
    if model is None:
        raise InvalidInput("this needs a teacher adapter with a .model (an HF T5, a causal LM or a per-digit-head "
                           "teacher) to decode with")
    return model


def teacher_top_items(adapter, catalog, examples, beam_size: int, top_n: int = 10, batch_size: int = 128,
                      show_progress: bool = False) -> torch.Tensor:
    """The teacher's own constrained top-n items (N, top_n) for every example (its attention decode, batched)."""
    from ..teacher.attention_decode import attention_beam_search

    model = _teacher_model(adapter)
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(examples), batch_size), desc="teacher top-10", disable=not show_progress,
                          leave=False):
            ids, am, _, _ = examples.batch(torch.arange(start, min(start + batch_size, len(examples))))
            out.append(attention_beam_search(model, adapter.layout, catalog, ids, am, beam_size,
                                             min(top_n, beam_size)).items)
    return torch.cat(out)


def teacher_beam_tree(
    adapter, catalog, input_ids: torch.Tensor, attention_mask: torch.Tensor, beam_size: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The teacher's constrained beam search on a batch, recorded: for digits l = 1..L-1 the prefixes it
    scored (B, W, l) and its logits there (B, W, K_l), W = beam_size (CPU, float32)."""
    from ..teacher.attention_decode import attention_beam_search

    model = _teacher_model(adapter)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def observe(level: int, prefixes: torch.Tensor, logits: torch.Tensor) -> None:
        if level > 0:
            seen[level] = (prefixes.cpu(), logits.float().cpu())

    attention_beam_search(model, adapter.layout, catalog, input_ids, attention_mask, beam_size, 1, observe=observe)
    levels = range(1, adapter.layout.num_levels)
    return [seen[l][0] for l in levels], [seen[l][1] for l in levels]


def _extract_shard(adapter, examples, lo: int, hi: int, batch_size: int, dtype: torch.dtype, bar,
                   catalog=None, teacher_beam: int = 0) -> dict[str, torch.Tensor]:
    """Features of examples[lo:hi] on the full T grid (each batch trimmed, then re-padded)."""
    t = examples.input_ids.shape[1]
    num_levels = examples.target_codes.shape[1]
    parts: dict[str, list[torch.Tensor]] = {"states": [], "mask": [], "input_ids": []}
    logits: list[list[torch.Tensor]] = [[] for _ in range(num_levels)]
    tree: dict[str, list[torch.Tensor]] = {f"{kind}{l}": [] for kind in ("beam_prefixes", "beam_logits")
                                           for l in range(1, num_levels)} if teacher_beam else {}
    with torch.inference_mode():
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            ids, am, codes, _ = examples.batch(torch.arange(start, stop))
            if hasattr(adapter, "encode_and_digit_logits"):  # decoder-only: one pass instead of two
                enc, per_digit = adapter.encode_and_digit_logits(ids, am, codes)
            else:
                enc = adapter.encode(ids, am)
                per_digit = adapter.digit_logits(enc, codes)
            # Causal-LM adapters re-pad on the left: keep the ids aligned with their states.
            enc_ids = getattr(enc, "input_ids", None)
            parts["states"].append(_pad_to(enc.states.float().cpu().to(dtype), t))
            parts["mask"].append(_pad_to(enc.mask.bool().cpu(), t, False))
            parts["input_ids"].append(_pad_to((ids if enc_ids is None else enc_ids).long().cpu(), t))
            for l, lg in enumerate(per_digit):
                logits[l].append(lg.float().cpu())
            if teacher_beam:
                prefixes, beam_logits = teacher_beam_tree(adapter, catalog, ids, am, teacher_beam)
                for l, (p, lg) in enumerate(zip(prefixes, beam_logits), start=1):
                    tree[f"beam_prefixes{l}"].append(p.to(torch.int32))
                    tree[f"beam_logits{l}"].append(lg.to(dtype))
            bar.update(stop - start)
    out = {k: torch.cat(v) for k, v in parts.items()}
    for l, lg in enumerate(logits):
        out[f"teacher_logits{l}"] = torch.cat(lg)
    return out | {k: torch.cat(v) for k, v in tree.items()}


def extract_features(
    adapter,
    examples,
    out_dir: Optional[str | Path] = None,
    batch_size: int = 128,
    storage_dtype: str = "float16",
    shard_size: int = 4096,
    show_progress: bool = False,
    catalog=None,
    teacher_beam: int = 0,
) -> FeatureStore:
    """Run the frozen teacher over `examples` (an Examples); with out_dir, store shards and resume/reuse them.

    teacher_beam > 0 also records the teacher's beam tree of that width on every example (needs `catalog`,
    the one the teacher decodes over); it has no effect on one-digit SIDs.
    """
    if storage_dtype not in _DTYPES:
        raise InvalidInput(f"storage_dtype must be one of {sorted(_DTYPES)}, got {storage_dtype!r}")
    if batch_size < 1 or shard_size < 1:
        raise InvalidInput(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    if isinstance(teacher_beam, bool) or not isinstance(teacher_beam, int) or teacher_beam < 0:
        raise InvalidInput(f"teacher_beam must be an int >= 0 (0 = ground-truth paths only), got {teacher_beam!r}")
    if teacher_beam and catalog is None:
        raise InvalidInput("teacher_beam > 0 needs the catalog the teacher decodes over (catalog=)")
    n = len(examples)
    if n == 0:
        raise InvalidInput("examples must hold at least one example")
    layout = adapter.layout
    if examples.target_codes.shape[1] != layout.num_levels:
        raise InvalidInput(
            f"examples have {examples.target_codes.shape[1]}-digit targets, the teacher layout {layout.num_levels}"
        )
    # A text prompt (a 'tokenizer' layout) may use any token of the teacher's vocabulary (OpenOneRec's <|sid_begin|>
    # sits after its SID tokens).
    model = getattr(adapter, "model", None)
    vocab = model.get_input_embeddings().weight.shape[0] if not layout.contiguous and model is not None else None
    layout.check_inputs(examples.input_ids, examples.attention_mask, vocab_size=vocab)
    meta = {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "num_examples": n,
        "seq_len": int(examples.input_ids.shape[1]),
        "num_levels": layout.num_levels,
        "codebook_sizes": list(layout.codebook_sizes),
        "hidden_size": int(adapter.hidden_size),
        "storage_dtype": storage_dtype,
        "shard_size": shard_size,
        "teacher": teacher_fingerprint(adapter),
        "examples": _examples_fingerprint(examples),
        "teacher_beam": teacher_beam if layout.num_levels > 1 else 0,
    }
    directory = Path(out_dir) if out_dir is not None else None
    if directory is not None and (directory / "features.json").is_file():
        try:
            old = json.loads((directory / "features.json").read_text())
        except json.JSONDecodeError:
            old = None
        if old is not None and {k: old.get(k) for k in meta} == meta:
            return load_features(directory)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        # Invalidate a previous complete store first, so a crash never pairs its index with new shards.
        (directory / "features.json").unlink(missing_ok=True)
    dtype = _DTYPES[storage_dtype]
    shard_meta = {k: str(v) for k, v in meta.items()}
    shards = []
    with tqdm(total=n, desc="teacher features", disable=not show_progress, unit="ex") as bar:
        for idx, lo in enumerate(range(0, n, shard_size)):
            hi = min(lo + shard_size, n)
            path = directory / f"shard{idx:05d}.safetensors" if directory is not None else None
            if path is not None and path.is_file():
                try:
                    with safe_open(str(path), "pt") as f:
                        done = f.metadata() == {**shard_meta, "lo": str(lo), "hi": str(hi)}
                except Exception:  # a truncated shard from a crash: recompute it
                    done = False
                if done:
                    bar.update(hi - lo)
                    shards.append(path.name)
                    continue
            tensors = _extract_shard(adapter, examples, lo, hi, batch_size, dtype, bar, catalog,
                                     meta["teacher_beam"])
            if path is not None:
                save_tensors(tensors, path, metadata={**shard_meta, "lo": str(lo), "hi": str(hi)})
                shards.append(path.name)
            else:
                shards.append(tensors)
    if directory is None:
        merged = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        return _store_from(merged, examples, layout.num_levels)
    # Inputs and targets go in one small file; the index is written last and marks completion.
    save_tensors({"target_codes": examples.target_codes.long(), "target_items": examples.target_items.long()},
                 directory / "targets.safetensors")
    write_meta(directory / "features.json", _FORMAT, FORMAT_VERSION,
               {k: v for k, v in meta.items() if k not in ("format", "format_version")} | {"shards": shards})
    return load_features(directory)


def _beam_fields(tensors: dict[str, torch.Tensor], num_levels: int) -> dict:
    """beam_prefixes / beam_logits of FeatureStore from stored tensors (none stored: no fields)."""
    if "beam_prefixes1" not in tensors:
        return {}
    levels = range(1, num_levels)
    return {"beam_prefixes": [tensors[f"beam_prefixes{l}"] for l in levels],
            "beam_logits": [tensors[f"beam_logits{l}"] for l in levels]}


def _store_from(tensors: dict[str, torch.Tensor], examples, num_levels: int) -> FeatureStore:
    return FeatureStore(
        states=tensors["states"],
        mask=tensors["mask"],
        input_ids=tensors["input_ids"],
        teacher_logits=[tensors[f"teacher_logits{l}"] for l in range(num_levels)],
        target_codes=examples.target_codes.long(),
        target_items=examples.target_items.long(),
        **_beam_fields(tensors, num_levels),
    )


def load_features(directory: str | Path) -> FeatureStore:
    """Load and validate a store written by extract_features."""
    directory = Path(directory)
    index = directory / "features.json"
    if not index.is_file():
        raise FileNotFoundError(f"no complete feature store in {directory} (features.json missing)")
    hint = f"delete {directory} to extract the features again"
    meta = read_meta(index, _FORMAT, FORMAT_VERSION, required=("shards", "num_levels", "num_examples", "hidden_size"),
                     hint=hint)
    parts = [load_tensors(directory / name, hint) for name in meta["shards"]]
    if not parts:
        raise ArtifactError(index, "lists no shards", hint)
    try:
        merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    except (KeyError, RuntimeError) as err:
        raise ArtifactError(directory, f"shards do not fit together ({err})", hint) from err
    targets = load_tensors(directory / "targets.safetensors", hint, expected=("target_codes", "target_items"))
    levels = meta["num_levels"]
    beam_keys = [f"{kind}{l}" for kind in ("beam_prefixes", "beam_logits") for l in range(1, levels)] \
        if meta.get("teacher_beam") else []
    missing = [k for k in ["states", "mask", "input_ids"] + [f"teacher_logits{l}" for l in range(levels)] + beam_keys
               if k not in merged]
    if missing:
        raise ArtifactError(directory / meta["shards"][0], f"lacks tensors {missing}", hint)
    store = FeatureStore(
        states=merged["states"],
        mask=merged["mask"].bool(),
        input_ids=merged["input_ids"],
        teacher_logits=[merged[f"teacher_logits{l}"] for l in range(meta["num_levels"])],
        target_codes=targets["target_codes"],
        target_items=targets["target_items"],
        **_beam_fields(merged, levels),
    )
    if len(store) != meta["num_examples"] or store.hidden_size != meta["hidden_size"]:
        raise InvalidInput(
            f"{directory} holds {len(store)} examples of width {store.hidden_size}, its index says "
            f"{meta['num_examples']} of width {meta['hidden_size']}"
        )
    return store
