"""Import a teacher saved by another code base: its checkpoint + SID file -> a teacher directory.

`import_teacher(format, checkpoint, sids, out)` writes what `load_teacher(out)` reads (HF
save_pretrained + layout.json + teacher.json) and the catalog in `out/catalog`. Formats (the
HF-T5 family; docs/architecture.md, "Importing a teacher"):

- ``sidmlp-official`` (ztguo715/SID-MLP, genrec/models/TIGER): `torch.save` of the `TIGER`
  module's state_dict, HF T5 keys under ``t5.``; SIDs = JSON ``{item: [c_1, .., c_{L-1}, dedup]}``
  whose last digit is written as its own token code (the tokenizer adds ``dedup + offset + 1``,
  dedup counting from 1), items numbered 1..N in file order; layout kind "sidmlp-official".
- ``tiger-xlt`` (XiaoLongtaoo/TIGER): `tiger.pth`, keys under ``model.``; SIDs = ``.npy`` (N, L)
  codes, row i is item i + 1; layout kind "tiger-xlt".

The T5 sizes (vocabulary, d_model, d_ff, layer counts, heads, relative-attention buckets, tied
head) are read from the state_dict's shapes; the feed-forward activation is not in it and comes
from the code base's own config file (`config`, YAML or JSON) or the `feed_forward_proj` option.
A given size that disagrees with the checkpoint is an error, as is a missing, unexpected or
mis-shaped key (ArtifactError naming the file and the key).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..data.catalog import SIDCatalog
from ..data.layout import TokenLayout
from ..data.sid_files import SID_FILE_FORMATS, codes_for_items
from ..errors import InvalidInput, MissingDependency
from ..io import ArtifactError, atomic_directory, write_json
from .digit_head_formats import DIGIT_HEAD_FORMATS, read_digit_heads
from .llm_import import LLM_FORMATS, import_llm_teacher
from .models import save_teacher

__all__ = ["IMPORT_FORMATS", "import_teacher", "read_code_base_config"]

_BLOCK = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.")


@dataclass(frozen=True)
class _Format:
    """What differs between the code bases: key prefix, layout kind, SID reader, defaults."""

    prefix: str
    kind: str
    read_sids: Callable[[Path], tuple[np.ndarray, list]]  # SID file -> (codes (N, L), item keys)
    source: str


IMPORT_FORMATS = {
    "sidmlp-official": _Format("t5.", "sidmlp-official", SID_FILE_FORMATS["sidmlp-official"], "ztguo715/SID-MLP"),
    "tiger-xlt": _Format("model.", "tiger-xlt", SID_FILE_FORMATS["tiger-xlt"], "XiaoLongtaoo/TIGER"),
}


def read_code_base_config(path: str | Path) -> dict:
    """A code base's own config file as a dict: YAML (.yaml/.yml, needs PyYAML) or JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise MissingDependency(f"reading {path} needs PyYAML: pip install pyyaml (or pass a JSON config)") from err
        try:
            blob = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ArtifactError(path, f"is not valid YAML ({err})") from err
    else:
        try:
            blob = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArtifactError(path, f"is not valid JSON ({err}); a .yaml/.yml name reads YAML") from err
    if not isinstance(blob, dict):
        raise ArtifactError(path, f"must hold a mapping of settings, got {type(blob).__name__}")
    return blob


def _load_state_dict(path: Path, prefix: str, fmt: str) -> dict[str, torch.Tensor]:
    """The checkpoint's T5 tensors with the code base's prefix stripped; ArtifactError naming a bad key."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors: all mean "not a loadable checkpoint"
        raise ArtifactError(path, f"torch.load could not read it ({err})") from err
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ArtifactError(path, "must be a state_dict (a dict of tensors), as torch.save(model.state_dict()) writes")
    out = {}
    for key, tensor in blob.items():
        if not key.startswith(prefix):
            raise ArtifactError(path, f"key {key!r} lacks the prefix {prefix!r} of {fmt} checkpoints "
                                      f"(HF T5 weights under the module's attribute)")
        out[key[len(prefix):]] = tensor
    return out


def _tensor(state: dict, key: str, path: Path, prefix: str) -> torch.Tensor:
    if key not in state:
        raise ArtifactError(path, f"missing key {prefix + key!r} (a T5ForConditionalGeneration weight)")
    return state[key]


def _setting(name: str, options: dict, config: dict, inferred: Any = None, *, hint: str = "") -> Any:
    """An option, else the config file's value, else what the checkpoint implies; they must agree."""
    given = options.get(name)
    if given is None:
        given = config.get(name)
    if given is not None and inferred is not None and given != inferred:
        raise InvalidInput(f"{name}={given!r} (option or config) disagrees with the checkpoint, which implies "
                           f"{name}={inferred!r}")
    value = inferred if given is None else given
    if value is None:
        raise InvalidInput(f"{name} is not in the checkpoint: pass the {name} option "
                           f"(--{name.replace('_', '-')}) or the code base's config file (--config){hint}")
    return value


def _t5_config_kwargs(state: dict, path: Path, prefix: str, options: dict, config: dict) -> dict:
    """T5Config sizes from the state_dict's shapes, checked against options / config."""
    vocab, d_model = _tensor(state, "shared.weight", path, prefix).shape
    attn = "encoder.block.0.layer.0.SelfAttention"
    inner = _tensor(state, f"{attn}.q.weight", path, prefix).shape[0]
    buckets, heads = _tensor(state, f"{attn}.relative_attention_bias.weight", path, prefix).shape
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    wi = "wi_0" if gated else "wi"
    d_ff = _tensor(state, f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight", path, prefix).shape[0]
    layers = {"encoder": set(), "decoder": set()}
    for key in state:
        match = _BLOCK.match(key)
        if match:
            layers[match.group(1)].add(int(match.group(2)))
    num_heads = _setting("num_heads", options, config, int(heads))
    if inner % num_heads:
        raise ArtifactError(path, f"attention width {inner} is not a multiple of num_heads {num_heads}")
    activation = _setting("feed_forward_proj", options, config,
                          hint=f" (its checkpoint has {'gated' if gated else 'plain'} feed-forward weights)")
    if str(activation).startswith("gated-") != gated:
        raise InvalidInput(f"feed_forward_proj={activation!r} does not fit the checkpoint's "
                           f"{'gated (wi_0, wi_1)' if gated else 'plain (wi)'} feed-forward weights")
    head = state.get("lm_head.weight")
    tied = head is None or torch.equal(head, state["shared.weight"])
    return dict(
        vocab_size=int(vocab),
        d_model=_setting("d_model", options, config, int(d_model)),
        d_ff=_setting("d_ff", options, config, int(d_ff)),
        num_layers=_setting("num_layers", options, config, len(layers["encoder"])),
        num_decoder_layers=_setting("num_decoder_layers", options, config, len(layers["decoder"])),
        num_heads=num_heads,
        d_kv=_setting("d_kv", options, config, inner // num_heads),
        relative_attention_num_buckets=int(buckets),
        feed_forward_proj=activation,
        dropout_rate=float(config.get("dropout_rate", 0.1)),
        tie_word_embeddings=tied,
        scale_decoder_outputs=tied,  # transformers 4.x scaled iff tied; 5.x records it
    )


def _layout(fmt: str, spec: _Format, codes: np.ndarray, vocab: int, options: dict, config: dict) -> TokenLayout:
    """The format's layout: codebook sizes from the option / config (default 256 each), user tokens from the vocab."""
    num_levels = codes.shape[1]
    sizes = options.get("codebook_sizes") or config.get("rq_codebook_size") or 256
    sizes = [int(sizes)] * num_levels if isinstance(sizes, int) else [int(k) for k in sizes]
    if len(sizes) != num_levels:
        raise InvalidInput(f"codebook_sizes {sizes} name {len(sizes)} digits but the SIDs have {num_levels}")
    if "rq_n_codebooks" in config and int(config["rq_n_codebooks"]) + 1 != num_levels:
        raise InvalidInput(f"the config's rq_n_codebooks={config['rq_n_codebooks']} means {config['rq_n_codebooks']} "
                           f"+ 1 (dedup) digits, but the SIDs have {num_levels}")
    if spec.kind == "tiger-xlt":
        return TokenLayout(tuple(sizes), kind="tiger-xlt")
    implied = vocab - 2 - sum(sizes)  # vocab = pad + codes + users + EOS
    users = _setting("n_user_tokens", options, config, implied if implied >= 1 else None)
    return TokenLayout(tuple(sizes), num_user_tokens=int(users), kind=spec.kind)


def _catalog(codes: np.ndarray, layout: TokenLayout, sids: Path, fmt: str, item_ids=None,
             shared: bool = False) -> SIDCatalog:
    """Items (1..N unless given) with the file's codes; ArtifactError for codes outside the layout's codebooks.

    shared: several items may share one SID (code bases that keep no dedup digit): a one-to-many catalog
    (SIDCatalog.with_shared_sids); otherwise a repeated SID is an error in the file.
    """
    for level, k in enumerate(layout.codebook_sizes):
        col = codes[:, level]
        if col.min() < 0 or col.max() >= k:
            bad = int(col[(col < 0) | (col >= k)][0])
            extra = (" (the last digit's token would be the first user token: the code base's own check "
                     "lets dedup reach the codebook size)") if fmt == "sidmlp-official" and bad == k else ""
            raise ArtifactError(sids, f"digit {level} holds code {bad}, outside its codebook [0, {k}){extra}")
    try:
        ids = torch.arange(1, codes.shape[0] + 1) if item_ids is None else torch.as_tensor(item_ids)
        if shared:
            return SIDCatalog.with_shared_sids(ids, torch.from_numpy(codes), layout.codebook_sizes)
        return SIDCatalog(ids, torch.from_numpy(codes), layout.codebook_sizes)
    except ValueError as err:
        raise ArtifactError(sids, f"does not describe a valid catalog ({err})") from err


def _dataset_catalog(prepared: str | Path, catalog: SIDCatalog, keys: list, sids: Path) -> tuple[SIDCatalog, list]:
    """The prepared dataset's catalog and raw item ids, checked to be the SID file's codes for its items."""
    from ..data.prepare import load_prepared

    data = load_prepared(prepared)
    expected = codes_for_items(keys, catalog.codes.numpy(), data.data.raw_item_ids, sids)
    same = (tuple(data.catalog.codebook_sizes) == tuple(catalog.codebook_sizes)
            and np.array_equal(data.catalog.codes.numpy(), expected))
    if not same:
        raise InvalidInput(f"the catalog of prepared (--prepared) {prepared} does not hold the codes of {sids} "
                           f"(codebook sizes {list(data.catalog.codebook_sizes)} vs {list(catalog.codebook_sizes)}); "
                           f"build it with `sidmlp prepare --sids {sids} --sids-format ...`")
    return data.catalog, list(data.data.raw_item_ids)


def import_teacher(
    format: str,
    checkpoint: str | Path,
    sids: str | Path | None,
    out: str | Path,
    config: str | Path | dict | None = None,
    prepared: str | Path | None = None,
    **options: Any,
):
    """Import another code base's T5 teacher into the teacher directory `out` (+ `out/catalog`).

    format: one of IMPORT_FORMATS. checkpoint: its saved state_dict. sids: its SID file. config:
    the code base's config file (YAML/JSON path) or a dict of its settings. options override the
    config: n_user_tokens, num_heads, d_kv, d_model, d_ff, num_layers, num_decoder_layers,
    feed_forward_proj, codebook_sizes (an int or one per digit; default 256 each).
    prepared: a `sidmlp prepare --sids` directory built from this SID file; the teacher's catalog
    is then that dataset's (its item ids), so `sidmlp distill --prepared` accepts the teacher.
    Returns (model, layout, catalog) as written.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    if format in DIGIT_HEAD_FORMATS:
        if prepared is not None:
            raise InvalidInput(f"prepared (--prepared) works with the SID-file formats {sorted(IMPORT_FORMATS)}; "
                               f"a {format} checkpoint holds its own SIDs")
        return _import_digit_heads(format, checkpoint, sids, out, config, options)
    if format in LLM_FORMATS:  # checkpoint = the save_pretrained directory, sids = its index.json
        unknown = sorted(k for k, v in options.items() if v is not None and k != "base_model")
        if unknown or config is not None:
            raise InvalidInput(f"format {format!r} reads its sizes from the model directory: options "
                               f"{unknown + (['config'] if config is not None else [])} do not apply")
        return import_llm_teacher(format, checkpoint, sids, out, base_model=options.get("base_model"))
    if format not in IMPORT_FORMATS:
        raise InvalidInput(f"format must be one of {sorted(IMPORT_FORMATS) + sorted(DIGIT_HEAD_FORMATS) + sorted(LLM_FORMATS)}, "
                           f"got {format!r}")
    known = {"n_user_tokens", "num_heads", "d_kv", "d_model", "d_ff", "num_layers", "num_decoder_layers",
             "feed_forward_proj", "codebook_sizes"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInput(f"unknown import options {unknown}; known: {sorted(known)}")
    spec = IMPORT_FORMATS[format]
    options = {k: v for k, v in options.items() if v is not None}
    settings = config if isinstance(config, dict) else (read_code_base_config(config) if config else {})
    checkpoint, sids = Path(checkpoint), Path(sids)
    _check_out(out)
    if not sids.is_file():
        raise FileNotFoundError(f"no SID file at {sids}")
    state = _load_state_dict(checkpoint, spec.prefix, format)
    kwargs = _t5_config_kwargs(state, checkpoint, spec.prefix, options, settings)
    codes, keys = spec.read_sids(sids)
    layout = _layout(format, spec, codes, kwargs["vocab_size"], options, settings)
    if layout.vocab_size != kwargs["vocab_size"]:
        raise InvalidInput(f"the checkpoint has {kwargs['vocab_size']} token embeddings but a {format} layout with "
                           f"codebook_sizes {list(layout.codebook_sizes)} and {layout.num_user_tokens} user tokens "
                           f"has vocab_size {layout.vocab_size}; pass codebook_sizes / n_user_tokens")
    catalog = _catalog(codes, layout, sids, format)
    if prepared is not None:
        catalog, keys = _dataset_catalog(prepared, catalog, keys, sids)
    model = T5ForConditionalGeneration(T5Config(
        **kwargs, pad_token_id=layout.pad_id, eos_token_id=layout.eos_id,
        decoder_start_token_id=layout.decoder_start_id))
    _load_weights(model, state, checkpoint, spec.prefix)
    model.eval()
    out = Path(out)
    with atomic_directory(out) as tmp:
        _write(tmp, model, layout, catalog, keys, {"format": format, "code_base": spec.source,
                                                   "checkpoint": str(checkpoint), "sids": str(sids)})
    return model, layout, catalog


def _check_out(out: str | Path) -> None:
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise InvalidInput(f"out {out} exists and is not an empty directory; choose a new one")


def _import_digit_heads(format: str, checkpoint, sids, out, config, options: dict):
    """A per-digit-head teacher (digit_head_formats.py) into the teacher directory `out` (+ `out/catalog`)."""
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise InvalidInput(f"format {format!r} takes its sizes from the checkpoint: options {given} do not apply")
    settings = config if isinstance(config, dict) else (read_code_base_config(config) if config else {})
    checkpoint = Path(checkpoint)
    sids = Path(sids) if sids is not None else None
    _check_out(out)
    if sids is not None and not sids.is_file():
        raise FileNotFoundError(f"no SID file at {sids}")
    model, codes, items, keys = read_digit_heads(format, checkpoint, sids, settings)
    layout = model.layout
    where = sids if sids is not None else checkpoint
    if codes.ndim != 2 or codes.shape[1] != layout.num_levels:
        raise ArtifactError(where, f"holds SIDs of shape {codes.shape}, but the model has {layout.num_levels} "
                                   f"digit heads")
    # GRID and cornac keep a dedup digit, RQ-VAE-Recommender strips it: items may share a SID there.
    catalog = _catalog(codes, layout, where, format, item_ids=items, shared=True)
    out = Path(out)
    with atomic_directory(out) as tmp:
        _write(tmp, model, layout, catalog, keys, {"format": format, "code_base": DIGIT_HEAD_FORMATS[format][1],
                                                    "checkpoint": str(checkpoint),
                                                    "sids": None if sids is None else str(sids)},
               item_ids=torch.arange(1, codes.shape[0] + 1) if items is None else torch.as_tensor(items))
    return model, layout, catalog


def _write(directory: Path, model, layout: TokenLayout, catalog: SIDCatalog, keys: list, source: dict,
           item_ids: Optional[torch.Tensor] = None) -> None:
    """The teacher directory: save_teacher's files, the catalog in catalog/, the item keys of the SID file
    (item_ids[i] is keys[i]'s item; default the catalog's items, which are all of them without shared SIDs)."""
    save_teacher(model, layout, directory, info={
        "imported_from": source,
        "catalog_fingerprint": catalog.fingerprint(),
    })
    catalog.save(directory / "catalog")
    ids = catalog.item_ids if item_ids is None else item_ids
    write_json(directory / "item_keys.json", {"item_ids": ids.tolist(), "keys": keys})


def _load_weights(model: torch.nn.Module, state: dict, path: Path, prefix: str) -> None:
    """Copy the checkpoint into the model: every key present, no extra key, every shape equal."""
    expected = model.state_dict()
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if model.config.tie_word_embeddings:
        tied.add("lm_head.weight")
    for key in sorted(state):
        if key not in expected:
            raise ArtifactError(path, f"unexpected key {prefix + key!r}: not a weight of the T5 these shapes imply")
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise ArtifactError(path, f"key {prefix + key!r} has shape {tuple(state[key].shape)}, expected "
                                      f"{tuple(expected[key].shape)} (from the checkpoint's other shapes)")
    missing = sorted(set(expected) - set(state) - tied)
    if missing:
        raise ArtifactError(path, f"missing key {prefix + missing[0]!r}" +
                            (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    model.load_state_dict(state, strict=False)
