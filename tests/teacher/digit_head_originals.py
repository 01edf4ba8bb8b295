"""Small faithful re-implementations of the per-digit-head code bases that are not on the package registry
(their forward as their sources define it), and artifacts written the way each code base saves them. Used by
test_import_digit_heads.py. (cornac installs from the registry: its tests use cornac itself, cornac_tiger.py.)

GRID: src/models/modules/semantic_id/tiger_generation_model.py (SemanticIDEncoderDecoder, T5MultiLayerFF),
src/models/components/network_blocks/mlp.py (MLP). RQ-VAE-Recommender: modules/model.py
(EncoderDecoderRetrievalModel, HF-T5 version), train_decoder.py (torch.compile, checkpoint dict).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from transformers import T5Config, T5EncoderModel
from transformers.models.t5.modeling_t5 import T5LayerFF, T5LayerNorm, T5Stack

T5 = dict(d_model=16, num_heads=2, d_kv=6, d_ff=24, dropout_rate=0.1)


def delete_module(module, name):
    """GRID's src/utils/utils.py delete_module: recursively delattr."""
    if hasattr(module, name):
        delattr(module, name)
    for _, child in module.named_children():
        delete_module(child, name)


def add_repeating_offset_to_rows(input_sids, codebook_size, num_hierarchies, attention_mask=None):
    num_cols = input_sids.shape[1]
    offsets = torch.arange(num_hierarchies, device=input_sids.device) * codebook_size
    repeats = (num_cols + num_hierarchies - 1) // num_hierarchies
    out = input_sids + offsets.repeat(repeats)[:num_cols]
    return out * attention_mask if attention_mask is not None else out


def inject_sep_token_between_sids(id_embeddings, attention_mask, sep_token, num_hierarchies):
    batch_size, seq_len, emb_dim = id_embeddings.size()
    items = seq_len // num_hierarchies
    emb = id_embeddings.view(batch_size, items, num_hierarchies, -1)
    mask = attention_mask.view(batch_size, items, num_hierarchies)
    sep = sep_token.unsqueeze(0).expand(batch_size, items, -1).unsqueeze(-2)
    emb = torch.cat([emb, sep], dim=-2)
    mask = torch.cat([mask, mask[:, :, [-1]]], dim=-1)
    return emb.reshape(batch_size, -1, emb_dim), mask.reshape(batch_size, -1)


def encoder_decoder_forward(m, table, encoder, decoder, bos, heads, input_ids, attention_mask, user_id, future_ids):
    """encoder_forward_pass + decoder_forward_pass (no cache) + heads, as GRID and RQ-VAE-Recommender both write
    them (the same code, under their own attribute names)."""
    shifted = add_repeating_offset_to_rows(input_ids, m.k, m.num_hierarchies, attention_mask)
    emb = table(shifted)
    if m.sep_token is not None:
        emb, attention_mask = inject_sep_token_between_sids(emb, attention_mask, m.sep_token, m.num_hierarchies)
    if user_id is not None and m.user_embedding is not None:
        user = m.user_embedding(torch.remainder(user_id[:, 0], m.user_embedding.num_embeddings))
        emb = torch.cat([user.unsqueeze(1), emb], dim=1)
        attention_mask = torch.cat([torch.ones(attention_mask.size(0), 1), attention_mask], dim=1)
    enc = encoder(inputs_embeds=emb, attention_mask=attention_mask).last_hidden_state
    fut = add_repeating_offset_to_rows(future_ids, m.k, m.num_hierarchies, torch.ones_like(future_ids))
    dec_in = torch.cat([bos.unsqueeze(0).expand(future_ids.size(0), 1, -1), table(fut)], dim=1)
    out = decoder(inputs_embeds=dec_in, encoder_hidden_states=enc, encoder_attention_mask=attention_mask,
                  use_cache=False).last_hidden_state[:, :-1]
    return [heads[h](out[:, h]) for h in range(m.num_hierarchies)]


# ---- GRID ------------------------------------------------------------------------------------


class GridMLP(nn.Module):
    def __init__(self, input_dim, output_dim, hidden_dim_list=None, activation=nn.ReLU, bias=True, dropout=0.0):
        super().__init__()
        hidden_dim_list = list(hidden_dim_list or []) + [output_dim]
        layers = [nn.Linear(input_dim, hidden_dim_list[0], bias=bias)]
        for i in range(1, len(hidden_dim_list)):
            layers.append(activation())
            layers.append(nn.Linear(hidden_dim_list[i - 1], hidden_dim_list[i], bias=bias))
            layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class T5MultiLayerFF(nn.Module):
    def __init__(self, config, num_layers):
        super().__init__()
        self.mlp = GridMLP(config.d_model, config.d_model, [config.d_ff for _ in range(num_layers)], nn.ReLU,
                           dropout=config.dropout_rate)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, hidden_states):
        return hidden_states + self.dropout(self.mlp(self.layer_norm(hidden_states)))


class GridEncoderModule(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        delete_module(self.encoder, "embed_tokens")
        delete_module(self.encoder, "shared")


class GridDecoderModule(nn.Module):
    def __init__(self, decoder, decoder_mlp, bos_token):
        super().__init__()
        self.decoder = decoder
        self.bos_token = bos_token
        self.decoder_mlp = decoder_mlp
        delete_module(self.decoder, "embed_tokens")
        delete_module(self.decoder, "shared")


def grid_hydra_config(num_hierarchies, mlp_layers=2, num_user_bins=3):
    """The run's .hydra/config.yaml, as configs/experiment/tiger_train_flat.yaml lays it out (small sizes)."""
    enc = dict(T5, num_layers=2, vocab_size=256)
    dec = dict(T5, num_layers=1, vocab_size=256, is_decoder=True, is_encoder_decoder=False)
    return {"model": {"huggingface_model": {"_target_": "transformers.T5EncoderModel", "config": enc},
                      "decoder": {"_target_": "transformers.models.t5.modeling_t5.T5Stack", "config": dec},
                      "num_hierarchies": num_hierarchies, "num_user_bins": num_user_bins, "mlp_layers": mlp_layers}}


class GridModel(nn.Module):
    """SemanticIDEncoderDecoder's modules and forward (encoder_forward_pass + decoder_forward_pass, no cache)."""

    def __init__(self, hydra, codebook_size, should_add_sep_token=True):
        super().__init__()
        m = hydra["model"]
        enc_cfg = T5Config(**m["huggingface_model"]["config"])
        dec_cfg = T5Config(**m["decoder"]["config"])
        self.num_hierarchies, self.k = m["num_hierarchies"], codebook_size
        d = enc_cfg.d_model
        self.encoder = GridEncoderModule(T5EncoderModel(enc_cfg))
        self.decoder = GridDecoderModule(
            T5Stack(dec_cfg),
            nn.ModuleList([nn.Linear(d, codebook_size, bias=False) for _ in range(self.num_hierarchies)]),
            nn.Parameter(torch.randn(1, d)))
        if m["mlp_layers"] is not None:
            for name, module in list(self.named_modules()):
                if isinstance(module, T5LayerFF):
                    parent, attr = name.rsplit(".", 1)
                    setattr(self.get_submodule(parent), attr,
                            T5MultiLayerFF(config=self.encoder.encoder.config, num_layers=m["mlp_layers"]))
        self.item_sid_embedding_table_encoder = nn.Embedding(codebook_size * self.num_hierarchies, d)
        bins = m["num_user_bins"]
        self.user_embedding = nn.Embedding(bins, d) if bins else None
        self.sep_token = nn.Parameter(torch.randn(1, d)) if should_add_sep_token else None

    def forward(self, input_ids, attention_mask, user_id, future_ids):
        """Per-hierarchy logits, teacher-forced on future_ids (B, H)."""
        return encoder_decoder_forward(self, self.item_sid_embedding_table_encoder, self.encoder.encoder,
                                       self.decoder.decoder, self.decoder.bos_token, self.decoder.decoder_mlp,
                                       input_ids, attention_mask, user_id, future_ids)


def grid_batch(catalog_codes, histories, users):
    """collate: item codes flattened, right-padded with padding_token -1, mask = seq != -1; user_id column."""
    width = max(len(h) for h in histories) * catalog_codes.shape[1]
    rows = [[int(c) for i in h for c in catalog_codes[i]] for h in histories]
    ids = torch.tensor([r + [-1] * (width - len(r)) for r in rows])
    mask = (ids != -1).long()
    return ids, mask, torch.tensor(users).unsqueeze(1)


def write_grid(tmp_path, hydra, model, sids):
    """Lightning's .ckpt (state_dict + what Lightning keeps beside it) and merged_predictions_tensor.pt."""
    ckpt = tmp_path / "checkpoints" / "checkpoint_003_000100.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.4.0",
                "state_dict": model.state_dict(), "loops": {}, "optimizer_states": [], "lr_schedulers": [],
                "hparams_name": "kwargs",
                "hyper_parameters": {"optimizer": functools.partial(torch.optim.AdamW, lr=1e-3),
                                     "top_k_for_generation": 10, "weight_tying": True}}, ckpt)
    path = tmp_path / "pickle" / "merged_predictions_tensor.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.as_tensor(sids).T.contiguous(), path)  # [L+1, N]: column = item
    return ckpt, path


# ---- RQ-VAE-Recommender ------------------------------------------------------------------------


class RqvaeModel(nn.Module):
    """EncoderDecoderRetrievalModel (HF-T5 version): its modules and forward's decoder pass."""

    def __init__(self, codebooks, num_hierarchies, k, num_layers=2, should_add_sep_token=True, num_user_bins=None):
        super().__init__()
        self.num_hierarchies, self.k = num_hierarchies, k
        self.register_buffer("codebooks", codebooks)
        d = T5["d_model"]
        common = dict(vocab_size=k * num_hierarchies, d_model=d, num_heads=T5["num_heads"], d_ff=T5["d_ff"],
                      num_layers=num_layers, d_kv=T5["d_kv"])
        self.encoder = T5EncoderModel(T5Config(**common, is_decoder=False))
        self.t5_decoder = T5Stack(T5Config(**common, is_decoder=True, is_encoder_decoder=False))
        self.bos_token = nn.Parameter(torch.randn(1, d))
        self.decoder_mlp = nn.ModuleList([nn.Linear(d, k, bias=False) for _ in range(num_hierarchies)])
        self.item_sid_embedding_table = nn.Embedding(k * num_hierarchies, d)
        self.user_embedding = nn.Embedding(num_user_bins, d) if num_user_bins else None
        self.sep_token = nn.Parameter(torch.randn(1, d)) if should_add_sep_token else None

    def forward(self, input_ids, attention_mask, user_id, future_ids):
        return encoder_decoder_forward(self, self.item_sid_embedding_table, self.encoder, self.t5_decoder,
                                       self.bos_token, self.decoder_mlp, input_ids, attention_mask, user_id,
                                       future_ids)


def write_rqvae(tmp_path, model, iteration=999):
    """train_decoder.py: model = torch.compile(model); torch.save({iter, model, optimizer, scheduler})."""
    compiled = torch.compile(model)
    optimizer = torch.optim.AdamW(compiled.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    path = tmp_path / f"checkpoint_{iteration}.pt"
    torch.save({"iter": iteration, "model": compiled.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, path)
    return path
