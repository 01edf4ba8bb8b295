"""Teachers with one output head per digit (FORMATS.md, "Family 2"): GRID, RQ-VAE-Recommender, cornac TIGER.

`DigitHeadsT5` is that design in one module: a T5 encoder stack and a T5 decoder stack fed
embeddings (neither uses a token embedding of its own), one item-SID embedding table
shared by encoder and decoder with code c of digit l at row ``embedding_offsets[l] + c``
(GRID / RQ-VAE-Recommender: l*K; cornac: pad 0, then 1 + cumsum of the level sizes), a
learned BOS vector as the first decoder input, heads[l] = Linear(d, K_l) (no bias in all
three code bases), optionally a user embedding (user id mod its rows, prepended to the
encoder input), a separator vector after each history item, and GRID's `mlp_layers`
feed-forward (`MultiLayerFF`) in place of T5's.

Digit l's logits are heads[l](decoder state l) over decoder inputs
[BOS, emb(c_0), ..., emb(c_{l-1})], exactly as the code bases train them.

Its inputs are token ids in `digit_heads_layout(config)` (a "custom" TokenLayout: pad 0,
digit l's codes from 1 + K_0 + ... + K_{l-1}, an EOS id no input carries, user tokens after
it, input_eos False): [user token (if it has a user embedding), SID tokens of the history...].
`encode` turns them into the code base's own encoder input (embedding rows, separators, user
row). The attention decoders (attention_decode.py) run it through `check_layout` and
`beam_step_fn` (KV-cached, t5_cache.py); `teacher_adapter` gives its TeacherAdapter; `sequence_format` says how its
results are laid out as HF sequences (hf_output.SequenceFormat); `save` / `load_digit_heads` keep it
as digit_heads.json + model.safetensors in a teacher directory (models.save_teacher / load_teacher).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..data.catalog import SIDCatalog
from ..data.layout import TokenLayout
from ..decode.types import Encoded
from ..errors import InvalidInput
from ..io import ArtifactError, load_tensors, read_json, save_tensors, write_json
from .adapters import _check_prefix_codes
from .hf_output import SequenceFormat
from .t5_cache import T5StackCache

__all__ = ["DigitHeadsConfig", "DigitHeadsT5", "DigitHeadsAdapter", "MultiLayerFF", "digit_heads_layout",
           "load_digit_heads"]

CONFIG_FILE = "digit_heads.json"
WEIGHTS_FILE = "model.safetensors"
# The T5Config settings a stack takes from DigitHeadsConfig.encoder / .decoder (others: HF defaults).
STACK_KEYS = ("num_layers", "num_heads", "d_kv", "d_ff", "dropout_rate", "feed_forward_proj",
              "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon")


@dataclass(frozen=True)
class DigitHeadsConfig:
    """Sizes of a DigitHeadsT5 (saved as digit_heads.json)."""

    codebook_sizes: tuple[int, ...]
    d_model: int
    encoder: dict
    decoder: dict
    embedding_offsets: tuple[int, ...]
    num_embeddings: int
    ff_layers: Optional[int] = None  # GRID's mlp_layers: MultiLayerFF (ff_layers hidden layers of d_ff)
    ff_d_ff: Optional[int] = None  # its hidden width (GRID takes the encoder's d_ff for both stacks)
    num_user_bins: int = 0
    sep_token: bool = False
    head_bias: bool = False
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = tuple(int(k) for k in self.codebook_sizes)
        offsets = tuple(int(o) for o in self.embedding_offsets)
        object.__setattr__(self, "codebook_sizes", sizes)
        object.__setattr__(self, "embedding_offsets", offsets)
        if not sizes or min(sizes) < 1:
            raise InvalidInput(f"codebook_sizes must be >= 1 each, got {list(sizes)}")
        if len(offsets) != len(sizes):
            raise InvalidInput(f"embedding_offsets must hold one row offset per digit ({len(sizes)}), got {offsets}")
        for level, (o, k) in enumerate(zip(offsets, sizes)):
            if o < 0 or o + k > self.num_embeddings:
                raise InvalidInput(f"digit {level}'s rows [{o}, {o + k}) lie outside the {self.num_embeddings}-row "
                                   f"SID embedding")
        for name in ("encoder", "decoder"):
            unknown = sorted(set(getattr(self, name)) - set(STACK_KEYS))
            if unknown:
                raise InvalidInput(f"{name} settings {unknown} are not T5 stack settings {list(STACK_KEYS)}")
        if self.ff_layers is not None and (self.ff_layers < 1 or not self.ff_d_ff):
            raise InvalidInput(f"ff_layers must be >= 1 with ff_d_ff set, got {self.ff_layers}, {self.ff_d_ff}")
        if self.num_user_bins < 0:
            raise InvalidInput(f"num_user_bins must be >= 0, got {self.num_user_bins}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, blob: dict) -> "DigitHeadsConfig":
        return cls(**blob)


def digit_heads_layout(config: DigitHeadsConfig) -> TokenLayout:
    """The token layout a DigitHeadsT5 reads (see the module docstring)."""
    sizes = config.codebook_sizes
    offsets = [1]
    for k in sizes[:-1]:
        offsets.append(offsets[-1] + k)
    eos = 1 + sum(sizes)
    users = int(config.num_user_bins)
    return TokenLayout(sizes, num_user_tokens=users, kind="custom", offsets=tuple(offsets), pad_id=0, eos_id=eos,
                       user_base=eos + 1 if users else None, input_eos=False)


class MultiLayerFF(nn.Module):
    """GRID's T5MultiLayerFF (tiger_generation_model.py), keys and order as there: x + MLP(T5LayerNorm(x)),
    MLP = Linear(d, d_ff), [ReLU, Linear, Dropout] x num_layers (hidden widths d_ff, then d), all with bias."""

    def __init__(self, d_model: int, d_ff: int, num_layers: int, dropout: float, eps: float):
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        super().__init__()
        dims = [d_ff] * num_layers + [d_model]
        layers: list[nn.Module] = [nn.Linear(d_model, dims[0])]
        for i in range(1, len(dims)):
            layers += [nn.ReLU(), nn.Linear(dims[i - 1], dims[i]), nn.Dropout(dropout)]
        self.mlp = nn.Module()
        self.mlp.model = nn.Sequential(*layers)
        self.layer_norm = T5LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.dropout(self.mlp.model(self.layer_norm(hidden_states)))


def _stack(config: DigitHeadsConfig, settings: dict, is_decoder: bool) -> nn.Module:
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Stack

    cfg = T5Config(vocab_size=1, d_model=config.d_model, is_decoder=is_decoder, is_encoder_decoder=False,
                   use_cache=False, eos_token_id=None, **settings)
    stack = T5Stack(cfg)
    del stack.embed_tokens  # fed embeddings only (GRID deletes it; the others never use it)
    if config.ff_layers is not None:
        for block in stack.block:
            block.layer[-1] = MultiLayerFF(config.d_model, config.ff_d_ff, config.ff_layers,
                                           float(cfg.dropout_rate), float(cfg.layer_norm_epsilon))
    return stack


class DigitHeadsT5(nn.Module):
    """Encoder-decoder T5 stacks with per-digit heads and a shared (level, code) embedding (module docstring)."""

    def __init__(self, config: DigitHeadsConfig):
        super().__init__()
        self.digit_heads_config = config
        d = config.d_model
        self.encoder = _stack(config, config.encoder, is_decoder=False)
        self.decoder = _stack(config, config.decoder, is_decoder=True)
        self.bos = nn.Parameter(torch.zeros(d))
        self.sid_embedding = nn.Embedding(config.num_embeddings, d)
        self.heads = nn.ModuleList(nn.Linear(d, k, bias=config.head_bias) for k in config.codebook_sizes)
        self.user_embedding = nn.Embedding(config.num_user_bins, d) if config.num_user_bins else None
        self.sep = nn.Parameter(torch.zeros(d)) if config.sep_token else None
        self.layout = digit_heads_layout(config)
        # No HF generate of its own: results are laid out as an encoder-decoder's, [decoder start (= pad 0),
        # the digits' tokens in self.layout, EOS], as a model distilled from it lays them out too.
        self.sequence_format = SequenceFormat()
        self.register_buffer("_rows", torch.tensor(config.embedding_offsets, dtype=torch.long), persistent=False)

    # ---- hooks the package's teacher code calls ----

    def check_layout(self, layout: TokenLayout, catalog: Optional[SIDCatalog] = None) -> None:
        """InvalidInput unless `layout` is this model's layout (and fits `catalog`)."""
        if layout != self.layout:
            raise InvalidInput(f"a per-digit-head teacher reads its own layout {self.layout}, got {layout}; "
                               f"use the layout load_teacher / import_teacher returned")
        if catalog is not None:
            layout.validate_against(catalog)

    def teacher_adapter(self, layout: TokenLayout, catalog: Optional[SIDCatalog] = None) -> "DigitHeadsAdapter":
        return DigitHeadsAdapter(self, layout, catalog)

    def beam_step_fn(self, layout: TokenLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     log_probs: bool = False):
        """A stateful step_fn (decode.types.StepFn) for decode.search.beam_search: the decoder stepped one digit at
        a time over [BOS, emb(c_0), ...] with cross-attention K/V once per user and a self-attention KV cache
        (t5_cache.T5StackCache), reordered by each kept beam's parent.

        log_probs=False: the head's logits (the search renormalises over the valid children).
        log_probs=True: their log-softmax over the head's K_l codes, for a search that only masks them
        (renormalize=False): how the code bases' own beam searches score (cornac's generate_beam)."""
        enc = self.encode_inputs(input_ids, attention_mask)
        device = enc.states.device
        cache = T5StackCache(self.decoder, enc.states, enc.mask)

        def step_fn(level: int, prefixes: torch.Tensor, parents: Optional[torch.Tensor]) -> torch.Tensor:
            b, w = prefixes.shape[:2]
            if level == 0:
                inputs = self.bos.view(1, 1, -1).expand(b, w, -1)
            else:
                cache.reorder(parents.to(device))
                inputs = self.sid_embedding(self._rows[level - 1] + prefixes[:, :, -1].to(device))
            logits = self.heads[level](cache.step(inputs))
            return logits.float().log_softmax(-1) if log_probs else logits

        return step_fn

    # ---- the model ----

    def code_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """SID-embedding rows of (..., l) codes of digits 0..l-1."""
        return self._rows[: codes.shape[-1]] + codes

    def encode_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """Encoder states of [user?, SID tokens...] inputs (any padding), built as the code bases build them."""
        layout = self.layout
        layout.check_inputs(input_ids, attention_mask)
        embeds, mask = self._encoder_embeddings(input_ids, attention_mask.bool())
        states = self.encoder(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state
        return Encoded(states=states, mask=mask)

    def _encoder_embeddings(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layout, cfg = self.layout, self.digit_heads_config
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # real tokens first (right padding)
        ids, mask = ids.gather(1, order), mask.gather(1, order)
        batch = ids.shape[0]
        user = None
        if cfg.num_user_bins:
            user = ids[:, 0] - layout.user_base
            if bool(((user < 0) | (user >= cfg.num_user_bins)).any()):
                raise InvalidInput(f"input_ids must start with a user token in [{layout.user_base}, "
                                   f"{layout.user_base + cfg.num_user_bins})")
            ids, mask = ids[:, 1:], mask[:, 1:]
        num_levels = layout.num_levels
        n = -(-ids.shape[1] // num_levels)
        pad = n * num_levels - ids.shape[1]
        ids = torch.cat([ids, ids.new_zeros(batch, pad)], dim=1).view(batch, n, num_levels)
        mask = torch.cat([mask, mask.new_zeros(batch, pad)], dim=1).view(batch, n, num_levels)
        offsets = torch.tensor(layout.offsets, device=ids.device)
        sizes = torch.tensor(layout.codebook_sizes, device=ids.device)
        codes = ids - offsets
        bad = mask & ((codes < 0) | (codes >= sizes))
        if bool(bad.any()) or bool((mask.any(dim=2) & ~mask.all(dim=2)).any()):
            first = "a user token, then " if cfg.num_user_bins else ""
            raise InvalidInput(f"input_ids rows must be {first}whole items: {num_levels} SID tokens each, digit 0 "
                               f"first (layout offsets {list(layout.offsets)})")
        embeds = self.sid_embedding(self.code_rows(torch.where(mask, codes, torch.zeros_like(codes))))
        if self.sep is not None:  # GRID / RQ-VAE-Recommender: a separator after each item, masked like its last digit
            embeds = torch.cat([embeds, self.sep.expand(batch, n, 1, -1)], dim=2)
            mask = torch.cat([mask, mask[:, :, -1:]], dim=2)
        embeds, mask = embeds.reshape(batch, -1, embeds.shape[-1]), mask.reshape(batch, -1)
        if user is not None:  # prepended after the separators, as GRID does
            embeds = torch.cat([self.user_embedding(user).unsqueeze(1), embeds], dim=1)
            mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        return embeds, mask

    def decode_states(self, states: torch.Tensor, mask: torch.Tensor, prefix_codes: torch.Tensor) -> torch.Tensor:
        """Decoder outputs (B, l + 1, d) over [BOS, emb(c_0), ..., emb(c_{l-1})] for (B, l) prefix codes."""
        bos = self.bos.view(1, 1, -1).expand(states.shape[0], 1, -1)
        inputs = torch.cat([bos, self.sid_embedding(self.code_rows(prefix_codes))], dim=1)
        return self.decoder(inputs_embeds=inputs, encoder_hidden_states=states,
                            encoder_attention_mask=mask.long(), use_cache=False).last_hidden_state

    # ---- saving ----

    def save(self, directory: str | Path) -> None:
        """digit_heads.json + model.safetensors into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / CONFIG_FILE, self.digit_heads_config.to_dict())
        save_tensors({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS_FILE)


def load_digit_heads(directory: str | Path, hint: str) -> DigitHeadsT5:
    """A DigitHeadsT5 from `directory` (save's files); ArtifactError naming the file and the key."""
    directory = Path(directory)
    blob = read_json(directory / CONFIG_FILE, hint)
    try:
        config = DigitHeadsConfig.from_dict(blob)
    except (TypeError, ValueError) as err:
        raise ArtifactError(directory / CONFIG_FILE, f"is not a per-digit-head teacher config ({err})", hint) from err
    model = DigitHeadsT5(config)
    expected = model.state_dict()
    tensors = load_tensors(directory / WEIGHTS_FILE, hint=hint)
    for key in sorted(set(tensors) | set(expected)):
        if key not in tensors:
            raise ArtifactError(directory / WEIGHTS_FILE, f"missing key {key!r}", hint)
        if key not in expected:
            raise ArtifactError(directory / WEIGHTS_FILE, f"unexpected key {key!r} (not in {CONFIG_FILE}'s model)",
                                hint)
        if tuple(tensors[key].shape) != tuple(expected[key].shape):
            raise ArtifactError(directory / WEIGHTS_FILE, f"key {key!r} has shape {tuple(tensors[key].shape)}, "
                                                         f"{CONFIG_FILE} implies {tuple(expected[key].shape)}", hint)
    model.load_state_dict(tensors)
    return model.eval()


class DigitHeadsAdapter:
    """TeacherAdapter of a DigitHeadsT5 (teacher/adapters.py's protocol)."""

    def __init__(self, model: DigitHeadsT5, layout: TokenLayout, catalog: Optional[SIDCatalog] = None):
        model.check_layout(layout, catalog)
        self.model = model
        self.layout = layout
        self.hidden_size = int(model.digit_heads_config.d_model)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """The code base's encoder input (embeddings, separators, user row) through its encoder."""
        return self.model.encode_inputs(input_ids, attention_mask)

    def digit_logits(self, encoded: Encoded, prefix_codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced decoder pass over [BOS, emb(c_0), ..., emb(c_{L-2})]; digit l = heads[l](state l)."""
        batch = encoded.states.shape[0]
        _check_prefix_codes(self.layout, prefix_codes, batch)
        fed = prefix_codes[:, : self.layout.num_levels - 1].to(encoded.states.device).long()
        hidden = self.model.decode_states(encoded.states, encoded.mask, fed)
        return [head(hidden[:, level]) for level, head in enumerate(self.model.heads)]

    def code_embeddings(self, level: int) -> torch.Tensor:
        """(K_l, D) rows of the shared SID embedding for digit `level`."""
        start = self.model.digit_heads_config.embedding_offsets[level]
        return self.model.sid_embedding.weight[start : start + self.layout.codebook_sizes[level]]

