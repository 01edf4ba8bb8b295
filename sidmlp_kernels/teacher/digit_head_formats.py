"""Readers of per-digit-head teachers (FORMATS.md, "Family 2"), for importers.import_teacher.

Each reader turns a code base's checkpoint into (DigitHeadsConfig, a DigitHeadsT5 state_dict,
SID codes (N, L), item ids, item keys), with an ArtifactError naming the file and the key it could not use:

grid    snap-research/GRID SemanticIDEncoderDecoder: a Lightning .ckpt ({"state_dict": ...}) with
        encoder.encoder.encoder.* (T5EncoderModel's stack), decoder.decoder.* (T5Stack),
        decoder.bos_token, decoder.decoder_mlp.{l}, item_sid_embedding_table_encoder (row l*K + c),
        optional user_embedding, sep_token; `mlp_layers` turns each feed-forward block into
        T5MultiLayerFF (keys ...layer.N.mlp.model.i). SIDs: merged_predictions_tensor.pt, [L+1, N].
rqvae   EdoardoBotta/RQ-VAE-Recommender (HF-T5 EncoderDecoderRetrievalModel): checkpoint_{iter}.pt =
        {"iter", "model", "optimizer", "scheduler"}, keys under `_orig_mod.` (torch.compile, stripped):
        encoder.encoder.*, t5_decoder.*, bos_token, decoder_mlp.{l}, item_sid_embedding_table,
        optional user_embedding, sep_token; SIDs in its `codebooks` buffer [N, L] (dedup stripped).
cornac  cornac 3.0.1 TIGER: Recommender.save's pickle (<dir>/TIGER/<timestamp>.pkl) of the recommender;
        its `model` is a TIGERSeq2Seq (token_emb with pad 0 and code c of level l at offsets[l] + c,
        encoder / decoder T5Stacks, bos, heads.{l}); SIDs in `sid_table` [N, L+1], item ids = cornac's item
        indices by `sid_to_item`, item keys = its raw item ids (`iid_map`, raw id -> index).
        Read without cornac: its classes unpickle as inert stand-ins (pickle_stubs.py). cornac's own
        score() feeds the last `max_len` history items only; the imported teacher reads what it is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InvalidInput
from ..io import ArtifactError
from .digit_heads import DigitHeadsConfig, DigitHeadsT5
from .pickle_stubs import stub_load

__all__ = ["DIGIT_HEAD_FORMATS", "read_digit_heads"]

_BLOCK = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.")
_MLP_LINEAR = re.compile(r"^encoder\.block\.0\.layer\.1\.mlp\.model\.(\d+)\.weight$")


def _rename(state: dict, path: Path, renames: list[tuple[str, str]], ignore: tuple[str, ...], outer: str
            ) -> tuple[dict, Callable[[str], str]]:
    """Source keys -> DigitHeadsT5 keys by prefix (first match); ignored keys dropped; unknown keys an error.
    Returns (our state, our key -> the source key, for messages)."""
    def match(key: str, prefix: str) -> bool:
        return key == prefix or (prefix.endswith(".") and key.startswith(prefix))

    out = {}
    for key, tensor in state.items():
        if key in ignore:
            continue
        hit = next(((t, o) for t, o in renames if match(key, t)), None)
        if hit is None:
            raise ArtifactError(path, f"unexpected key {outer + key!r}: not a weight of this code base's model")
        out[hit[1] + key[len(hit[0]):]] = tensor

    def name_of(key: str) -> str:
        hit = next(((t, o) for t, o in renames if match(key, o)), None)
        return outer + (key if hit is None else hit[0] + key[len(hit[1]):])

    return out, name_of


def _stack_sizes(state: dict, stack: str, path: Path, name_of: Callable[[str], str]) -> dict:
    """num_layers, num_heads, d_kv, d_ff (and the buckets) of one T5 stack, from its shapes."""
    def get(key):
        if key not in state:
            raise ArtifactError(path, f"missing key {name_of(key)!r} (a T5 stack weight)")
        return state[key]

    attn = f"{stack}.block.0.layer.0.SelfAttention"
    buckets, heads = get(f"{attn}.relative_attention_bias.weight").shape
    inner = get(f"{attn}.q.weight").shape[0]
    layers = {int(m.group(2)) for key in state for m in [_BLOCK.match(key)] if m and m.group(1) == stack}
    ff = f"{stack}.block.0.layer.{2 if stack == 'decoder' else 1}"
    sizes = dict(num_layers=len(layers), num_heads=int(heads), d_kv=int(inner) // int(heads),
                 relative_attention_num_buckets=int(buckets))
    if f"{ff}.DenseReluDense.wi_0.weight" in state:
        raise ArtifactError(path, f"key {name_of(ff + '.DenseReluDense.wi_0.weight')!r}: gated "
                                  f"feed-forward blocks are not what this code base builds")
    if f"{ff}.DenseReluDense.wi.weight" in state:
        sizes["d_ff"] = int(state[f"{ff}.DenseReluDense.wi.weight"].shape[0])
    return sizes


def _ff_layers(state: dict) -> tuple[int | None, int | None]:
    """GRID's MultiLayerFF depth and hidden width from encoder block 0's keys (None: T5's own FF)."""
    linears = sorted(int(m.group(1)) for key in state for m in [_MLP_LINEAR.match(key)] if m)
    if not linears:
        return None, None
    return len(linears) - 1, int(state[f"encoder.block.0.layer.1.mlp.model.{linears[0]}.weight"].shape[0])


def _build(state: dict, name_of: Callable[[str], str], path: Path, offsets: Callable[[list[int]], list[int]], fmt: str,
           settings: dict) -> tuple[DigitHeadsConfig, dict]:
    """DigitHeadsConfig from the renamed state's shapes; the state checked key by key against its model."""
    for vec in ("bos", "sep"):
        if vec in state:
            state[vec] = state[vec].reshape(-1)
    if "sid_embedding.weight" not in state:
        raise ArtifactError(path, "missing the item-SID embedding table (" +
                            {"grid": "item_sid_embedding_table_encoder.weight",
                             "rqvae": "item_sid_embedding_table.weight", "cornac": "token_emb.weight"}[fmt] + ")")
    rows, d_model = state["sid_embedding.weight"].shape
    sizes = []
    while f"heads.{len(sizes)}.weight" in state:
        sizes.append(int(state[f"heads.{len(sizes)}.weight"].shape[0]))
    if not sizes:
        raise ArtifactError(path, f"missing key {name_of('heads.0.weight')!r} (digit 0's output head)")
    ff_layers, ff_d_ff = _ff_layers(state)
    stacks = {}
    for stack in ("encoder", "decoder"):
        stacks[stack] = _stack_sizes(state, stack, path, name_of)
        stacks[stack].update(settings.get(stack, {}))
        if ff_layers is not None:
            stacks[stack].setdefault("d_ff", ff_d_ff)
    expected_ff = settings.get("ff_layers", ff_layers)
    if expected_ff != ff_layers:
        raise InvalidInput(f"the config's mlp_layers={expected_ff} but {path} holds "
                           f"{'T5 feed-forward blocks' if ff_layers is None else f'{ff_layers}-layer MLP blocks'}")
    config = DigitHeadsConfig(
        codebook_sizes=tuple(sizes), d_model=int(d_model), encoder=stacks["encoder"], decoder=stacks["decoder"],
        embedding_offsets=tuple(offsets(sizes)), num_embeddings=int(rows), ff_layers=ff_layers, ff_d_ff=ff_d_ff,
        num_user_bins=int(state["user_embedding.weight"].shape[0]) if "user_embedding.weight" in state else 0,
        sep_token="sep" in state, head_bias="heads.0.bias" in state, source={"format": fmt})
    expected = DigitHeadsT5(config).state_dict()
    for key in sorted(set(expected) | set(state)):
        if key not in state:
            raise ArtifactError(path, f"missing key {name_of(key)!r}")
        if key not in expected:
            raise ArtifactError(path, f"unexpected key {name_of(key)!r}: not a weight of the model its "
                                      f"other shapes imply")
        if tuple(state[key].shape) != tuple(expected[key].shape):
            raise ArtifactError(path, f"key {name_of(key)!r} has shape {tuple(state[key].shape)}, "
                                      f"expected {tuple(expected[key].shape)} (from the checkpoint's other shapes)")
    return config, state


def _strided(sizes: list[int]) -> list[int]:
    """GRID / RQ-VAE-Recommender: one table, digit l's codes at l*K (every digit K codes)."""
    if len(set(sizes)) != 1:
        raise InvalidInput(f"a shared l*K embedding needs equal codebook sizes, the heads have {sizes}")
    return [level * sizes[0] for level in range(len(sizes))]


def _cumulative(sizes: list[int]) -> list[int]:
    """cornac: row 0 is padding, digit l's codes from 1 + K_0 + ... + K_{l-1}."""
    return [1 + sum(sizes[:level]) for level in range(len(sizes))]


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return stub_load(path, torch_file=True)
    except Exception as err:  # pickle, zip and torch errors: all mean "not a loadable checkpoint"
        raise ArtifactError(path, f"torch.load could not read it ({err})") from err


def _tensors(blob: Any, path: Path, what: str) -> dict:
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ArtifactError(path, f"{what} must be a state_dict (a dict of tensors)")
    return blob


def _config_value(settings: dict, dotted: str):
    node: Any = settings
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


_GRID_T5 = {"d_ff": "d_ff", "d_kv": "d_kv", "num_heads": "num_heads", "num_layers": "num_layers",
            "dropout_rate": "dropout_rate"}


def _grid_settings(config: dict) -> dict:
    """The Hydra run config's T5 settings (model.huggingface_model.config, model.decoder.config) and mlp_layers."""
    out: dict = {"encoder": {}, "decoder": {}}
    for stack, where in (("encoder", "model.huggingface_model.config"), ("decoder", "model.decoder.config")):
        for theirs, ours in _GRID_T5.items():
            value = _config_value(config, f"{where}.{theirs}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[stack][ours] = value
    if _config_value(config, "model") is not None:
        out["ff_layers"] = _config_value(config, "model.mlp_layers")
    return out


def _agree(config: DigitHeadsConfig, settings: dict, path: Path) -> None:
    """Every size the code base's config names equals the checkpoint's (dropout is the config's alone)."""
    for stack in ("encoder", "decoder"):
        inferred = getattr(config, stack)
        for name, value in settings.get(stack, {}).items():
            if name != "dropout_rate" and name in inferred and inferred[name] != value:
                raise InvalidInput(f"the config's {stack} {name}={value} disagrees with {path}, whose shapes imply "
                                   f"{name}={inferred[name]}")


def read_grid(checkpoint: Path, sids: Path | None, settings: dict):
    blob = _torch_load(checkpoint)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ArtifactError(checkpoint, "is not a Lightning checkpoint: no 'state_dict' entry")
    state = _tensors(blob["state_dict"], checkpoint, "its 'state_dict'")
    renames = [("encoder.encoder.encoder.", "encoder."), ("decoder.decoder_mlp.", "heads."),
               ("decoder.bos_token", "bos"), ("decoder.decoder.", "decoder."),
               ("item_sid_embedding_table_encoder.weight", "sid_embedding.weight"),
               ("user_embedding.weight", "user_embedding.weight"), ("sep_token", "sep")]
    ours, name_of = _rename(state, checkpoint, renames, (), "state_dict.")
    grid = _grid_settings(settings)
    overrides = {s: {k: v for k, v in grid[s].items() if k == "dropout_rate"} for s in ("encoder", "decoder")}
    if "ff_layers" in grid:
        overrides["ff_layers"] = grid["ff_layers"]
    config, ours = _build(ours, name_of, checkpoint, _strided, "grid", overrides)
    _agree(config, grid, checkpoint)
    if sids is None:
        raise InvalidInput("grid needs sids= (--sids): its merged_predictions_tensor.pt")
    codes = _torch_load(sids)
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.dtype.is_floating_point:
        raise ArtifactError(sids, "must hold an integer tensor [L+1, N] (one column per item)")
    codes = codes.T.long().numpy()
    return config, ours, codes, list(range(codes.shape[0])), list(range(codes.shape[0]))


def read_rqvae(checkpoint: Path, sids: Path | None, settings: dict):
    blob = _torch_load(checkpoint)
    if not isinstance(blob, dict) or "model" not in blob:
        raise ArtifactError(checkpoint, "is not a checkpoint_{iter}.pt: no 'model' entry "
                                        "(expected {'iter', 'model', 'optimizer', 'scheduler'})")
    state = _tensors(blob["model"], checkpoint, "its 'model'")
    state = {k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k: v for k, v in state.items()}
    if "codebooks" not in state:
        raise ArtifactError(checkpoint, "missing key 'model._orig_mod.codebooks' (the items' SIDs, [N, L])")
    codes = state["codebooks"].long().numpy()
    renames = [("encoder.encoder.", "encoder."), ("t5_decoder.", "decoder."), ("bos_token", "bos"),
               ("decoder_mlp.", "heads."), ("item_sid_embedding_table.weight", "sid_embedding.weight"),
               ("user_embedding.weight", "user_embedding.weight"), ("sep_token", "sep")]
    unused = ("codebooks", "encoder.shared.weight", "encoder.encoder.embed_tokens.weight",
              "t5_decoder.embed_tokens.weight")  # T5's own token tables: the model feeds embeddings
    ours, name_of = _rename(state, checkpoint, renames, unused, "model._orig_mod.")
    config, ours = _build(ours, name_of, checkpoint, _strided, "rqvae", {})
    return config, ours, codes, list(range(codes.shape[0])), list(range(codes.shape[0]))


def read_cornac(checkpoint: Path, sids: Path | None, settings: dict):
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no cornac model file at {checkpoint}")
    try:
        rec = stub_load(checkpoint, torch_file=False)
    except Exception as err:
        raise ArtifactError(checkpoint, f"is not a cornac Recommender.save pickle ({err})") from err
    for attr in ("model", "sid_table", "level_sizes", "sid_to_item"):
        if not hasattr(rec, attr):
            raise ArtifactError(checkpoint, f"the pickled recommender has no attribute {attr!r} (a cornac TIGER has)")
    if not isinstance(rec.model, torch.nn.Module):
        raise ArtifactError(checkpoint, "its 'model' is not a torch module (cornac's TIGERSeq2Seq)")
    state = dict(rec.model.state_dict())
    sizes = [int(k) for k in rec.level_sizes]
    offsets = state.get("offsets")
    if offsets is None or offsets.tolist() != _cumulative(sizes):
        raise ArtifactError(checkpoint, f"model key 'offsets' is {None if offsets is None else offsets.tolist()}, "
                                        f"expected {_cumulative(sizes)} for level_sizes {sizes}")
    renames = [("token_emb.weight", "sid_embedding.weight"), ("encoder.", "encoder."), ("decoder.", "decoder."),
               ("bos", "bos"), ("heads.", "heads.")]
    unused = ("offsets", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    ours, name_of = _rename(state, checkpoint, renames, unused, "model.")
    config, ours = _build(ours, name_of, checkpoint, _cumulative, "cornac", {})
    if list(config.codebook_sizes) != sizes:
        raise ArtifactError(checkpoint, f"its heads have sizes {list(config.codebook_sizes)} but level_sizes "
                                        f"is {sizes}")
    codes = np.asarray(rec.sid_table, dtype=np.int64)
    items = []
    for row in codes:
        sid = tuple(int(v) for v in row)
        if sid not in rec.sid_to_item:
            raise ArtifactError(checkpoint, f"sid_table row {sid} is not a key of sid_to_item")
        items.append(int(rec.sid_to_item[sid]))
    return config, ours, codes, items, _cornac_keys(rec, items, checkpoint)


def _cornac_keys(rec: Any, items: list[int], path: Path) -> list:
    """cornac's raw item ids of `items` (its indices) from `iid_map` (raw id -> index); the indices without one."""
    iid_map = getattr(rec, "iid_map", None)
    if not isinstance(iid_map, dict):
        return list(items)
    raw_of = {int(index): raw for raw, index in iid_map.items()}
    missing = [i for i in items if i not in raw_of]
    if missing:
        raise ArtifactError(path, f"item index {missing[0]} of sid_to_item has no raw id in iid_map")
    return [raw_of[i].item() if isinstance(raw_of[i], np.generic) else raw_of[i] for i in items]


DIGIT_HEAD_FORMATS = {
    "grid": (read_grid, "snap-research/GRID"),
    "rqvae": (read_rqvae, "EdoardoBotta/RQ-VAE-Recommender"),
    "cornac": (read_cornac, "PreferredAI/cornac 3.0.1"),
}


def read_digit_heads(fmt: str, checkpoint: Path, sids: Path | None, settings: dict):
    """(DigitHeadsT5 with the checkpoint's weights, SID codes (N, L), item ids, item keys) of a Family-2 format."""
    reader, _ = DIGIT_HEAD_FORMATS[fmt]
    config, state, codes, items, keys = reader(checkpoint, sids, settings)
    model = DigitHeadsT5(config)
    model.load_state_dict(state)
    return model.eval(), codes, items, keys
