"""accelerate(): distil a teacher into SID-MLP heads; AcceleratedRecommender serves them.

generate() runs, per batch of users: the encoder once (the teacher's, or the
SID-MLP++ MLP encoder), the context readout once, project_context once, then per
digit one `step` call (folded head + constrained beam step). The encoder output
is never copied per beam: ctx_proj rows broadcast over beams inside the step.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from .decode.types import Encoded
from .teacher.adapters import adapter_for
from .data.catalog import SIDCatalog
from .decode.types import GenerationOutput, check_beam_args
from .configs import DistillConfig
from .distill.distill import ValidSet, distill
from .training import TrainResult, barrier, dist_info
from .distill.features import FeatureStore, encode_in_batches, extract_features, load_features, teacher_fingerprint
from .decode.backends import decode_folded
from .decode.folded import FoldedHeads, project_context
from .data.layout import TokenLayout
from .configs import EncoderTrainConfig
from .distill.mlp_encoder import MLPEncoder, MLPEncoderConfig, train_mlp_encoder
from .distill.student import SIDMLP, SIDMLPConfig

__all__ = ["AcceleratedRecommender", "accelerate", "as_adapter", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_FORMAT = "sidmlp-accelerated"


def _is_adapter(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("encode", "digit_logits", "code_embeddings", "layout", "hidden_size"))


def as_adapter(teacher: Any, catalog: Optional[SIDCatalog] = None, layout: Optional[TokenLayout] = None):
    """A TeacherAdapter for `teacher` (an adapter already, or a HF T5 / causal LM via adapter_for)."""
    if _is_adapter(teacher):
        adapter = teacher
        if layout is not None and adapter.layout != layout:
            raise ValueError(f"teacher adapter has layout {adapter.layout}, but layout={layout} was given")
    elif isinstance(teacher, torch.nn.Module) and hasattr(teacher, "config"):
        if layout is None:
            if catalog is None:
                raise ValueError("a HF teacher needs a layout or a catalog to derive one from")
            layout = TokenLayout.for_catalog(catalog)
        adapter = adapter_for(teacher, layout, catalog)
    else:
        raise TypeError(
            f"teacher must be a TeacherAdapter or a HF model, got {type(teacher).__name__}"
        )
    if catalog is not None:
        adapter.layout.validate_against(catalog)
    return adapter


def _catalog_fingerprint(catalog: SIDCatalog) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(list(catalog.codebook_sizes)).encode())
    h.update(catalog.item_ids.numpy().tobytes())
    h.update(catalog.codes.numpy().tobytes())
    return h.hexdigest()[:16]


class AcceleratedRecommender:
    """SID-MLP heads (folded) + an encoder + the catalog: fast, catalog-constrained generate()."""

    def __init__(
        self,
        layout: TokenLayout,
        catalog: SIDCatalog,
        student: SIDMLP,
        teacher=None,
        encoder: Optional[MLPEncoder] = None,
        info: Optional[dict] = None,
    ):
        layout.validate_against(catalog)
        if (teacher is None) == (encoder is None):
            raise ValueError("give exactly one encoder: the teacher adapter (SID-MLP) or an MLPEncoder (SID-MLP++)")
        if tuple(student.config.codebook_sizes) != tuple(catalog.codebook_sizes):
            raise ValueError(
                f"student codebook_sizes {student.config.codebook_sizes} != catalog {catalog.codebook_sizes}"
            )
        self.teacher = as_adapter(teacher, catalog, layout) if teacher is not None else None
        hidden = self.teacher.hidden_size if self.teacher is not None else encoder.config.hidden_size
        if hidden != student.config.encoder_dim:
            raise ValueError(f"encoder width {hidden} != student encoder_dim {student.config.encoder_dim}")
        self.layout = layout
        self.catalog = catalog
        self.student = student.eval()
        self.encoder = encoder.eval() if encoder is not None else None
        self.folded: FoldedHeads = student.fold()
        # Decode backend: None picks automatically (CUDA -> Triton + CUDA ops, CPU -> C++ ops,
        # no extension -> PyTorch reference; SIDMLP_BACKEND overrides), or 'reference'|'cpu'|'triton'.
        self.backend: Optional[str] = None
        self.info = dict(info or {})

    @property
    def device(self) -> torch.device:
        """Device of the heads (inputs must live there too)."""
        return self.folded.out_weight[0].device

    def to(self, device: str | torch.device) -> "AcceleratedRecommender":
        """Move heads (and the MLP encoder) to `device`; a teacher encoder stays where its owner put it."""
        self.student.to(device)
        if self.encoder is not None:
            self.encoder.to(device)
        self.folded = self.folded.to(device)
        return self

    @property
    def uses_teacher_encoder(self) -> bool:
        """True for SID-MLP (teacher encoder), False for SID-MLP++ (MLP encoder)."""
        return self.encoder is None

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """ValueError for bad inputs: shapes, token ids outside the layout, empty histories."""
        self.layout.check_inputs(input_ids, attention_mask)
        if self.encoder is not None and input_ids.device != self.device:
            raise ValueError(f"input_ids are on {input_ids.device} but the model is on {self.device}")

    @torch.no_grad()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """Encoder states once per user (teacher encoder or MLP encoder)."""
        self.check_inputs(input_ids, attention_mask)
        if self.encoder is not None:
            return self.encoder(input_ids, attention_mask)
        return self.teacher.encode(input_ids, attention_mask)

    @torch.no_grad()
    def context_projection(self, encoded: Encoded) -> list[torch.Tensor]:
        """Per head, the (B, H) first-layer contribution of the user context: once per user."""
        # A teacher encoder may live on another device than the heads: bring its (B, T, D) output over once.
        ctx = self.student.context(encoded.states.float().to(self.device), encoded.mask.to(self.device))
        return project_context(self.folded, ctx)

    @torch.no_grad()
    def decode(self, ctx_proj: list[torch.Tensor], beam_size: int = 50, top_n: int = 10) -> GenerationOutput:
        """Constrained beam search over the folded heads on the selected backend (see backends.py)."""
        return decode_folded(self.folded, ctx_proj, self.catalog, beam_size, top_n, backend=self.backend)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, beam_size: int = 50, top_n: int = 10
    ) -> GenerationOutput:
        """Top-n catalog items per user (ranked, distinct, all valid) for inputs in the teacher's layout."""
        check_beam_args(beam_size, top_n)
        encoded = self.encode(input_ids, attention_mask)
        return self.decode(self.context_projection(encoded), beam_size, top_n)

    def generate_batched(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, beam_size: int = 50, top_n: int = 10,
        batch_size: int = 256,
    ) -> GenerationOutput:
        """generate() over many users in chunks of batch_size (bounded memory)."""
        outs = [
            self.generate(input_ids[s : s + batch_size], attention_mask[s : s + batch_size], beam_size, top_n)
            for s in range(0, input_ids.shape[0], batch_size)
        ]
        return GenerationOutput(*(torch.cat([getattr(o, f) for o in outs]) for f in ("items", "codes", "scores")))

    # ---------------------------------------------------------------- persistence

    def save(self, directory: str | Path) -> None:
        """Write heads, folded tensors, encoder (SID-MLP++), catalog, layout and config (safetensors + JSON)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "accelerated.json").unlink(missing_ok=True)  # written last: marks a complete save
        save_file({k: v.contiguous() for k, v in self.student.state_dict().items()}, str(directory / "student.safetensors"))
        save_file(self.folded.to_tensors(), str(directory / "folded.safetensors"))
        if self.encoder is not None:
            save_file({k: v.contiguous() for k, v in self.encoder.state_dict().items()},
                      str(directory / "mlp_encoder.safetensors"))
        self.catalog.save(directory / "catalog")
        meta = {
            "format": _FORMAT,
            "format_version": FORMAT_VERSION,
            "encoder": "mlp" if self.encoder is not None else "teacher",
            "student_config": self.student.config.to_dict(),
            "encoder_config": self.encoder.config.to_dict() if self.encoder is not None else None,
            "layout": json.loads(self.layout.to_json()),
            "catalog_fingerprint": _catalog_fingerprint(self.catalog),
            "teacher_fingerprint": self.info.get("teacher_fingerprint")
            or (teacher_fingerprint(self.teacher) if self.teacher is not None else None),
            "ln_eps": self.folded.ln_eps,
            "info": {k: v for k, v in self.info.items() if k != "teacher_fingerprint"},
        }
        tmp = directory / f"accelerated.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, directory / "accelerated.json")

    @classmethod
    def load(
        cls,
        directory: str | Path,
        teacher=None,
        catalog: Optional[SIDCatalog] = None,
        layout: Optional[TokenLayout] = None,
    ) -> "AcceleratedRecommender":
        """Load and validate a saved recommender; SID-MLP needs its teacher, catalog/layout are checked if given."""
        directory = Path(directory)
        meta_path = directory / "accelerated.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no accelerated recommender in {directory} (accelerated.json missing)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"corrupted {meta_path}: {err}") from err
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path} is not a sidmlp accelerated recommender (format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path} has format_version {meta.get('format_version')!r}, this version reads {FORMAT_VERSION}"
            )
        saved_layout = TokenLayout.from_json(json.dumps(meta["layout"]))
        saved_catalog = SIDCatalog.load(directory / "catalog")
        if _catalog_fingerprint(saved_catalog) != meta["catalog_fingerprint"]:
            raise ValueError(f"{directory / 'catalog'} does not match the catalog this model was saved with")
        if layout is not None and layout != saved_layout:
            raise ValueError(
                f"layout mismatch: {directory} was built for {saved_layout}, got {layout}"
            )
        if catalog is not None and catalog != saved_catalog:
            raise ValueError(
                f"catalog mismatch: {directory} was built for {saved_catalog} "
                f"(fingerprint {meta['catalog_fingerprint']}), got {catalog} "
                f"(fingerprint {_catalog_fingerprint(catalog)}); distil again for the new catalog"
            )
        student = SIDMLP(SIDMLPConfig.from_dict(meta["student_config"]))
        _load_state(student, directory / "student.safetensors")
        encoder = adapter = None
        if meta["encoder"] == "mlp":
            enc_cfg = MLPEncoderConfig.from_dict(meta["encoder_config"])
            encoder = MLPEncoder(enc_cfg)
            _load_state(encoder, directory / "mlp_encoder.safetensors")
            if teacher is not None:
                as_adapter(teacher, saved_catalog, saved_layout)  # only validated: SID-MLP++ does not need it
        elif meta["encoder"] == "teacher":
            if teacher is None:
                raise ValueError(
                    f"{directory} is a SID-MLP model that runs on its teacher's encoder: pass teacher= "
                    "(the HF model or its adapter)"
                )
            try:
                adapter = as_adapter(teacher, saved_catalog, saved_layout)
            except ValueError as err:
                raise ValueError(f"teacher does not match {directory}: {err}") from err
            got = teacher_fingerprint(adapter)
            if meta.get("teacher_fingerprint") and got != meta["teacher_fingerprint"]:
                raise ValueError(
                    f"teacher mismatch: {directory} was distilled from teacher {meta['teacher_fingerprint']}, "
                    f"this teacher's code embeddings hash to {got}"
                )
        else:
            raise ValueError(f"{meta_path}: unknown encoder kind {meta['encoder']!r}")
        info = dict(meta.get("info") or {})
        info["teacher_fingerprint"] = meta.get("teacher_fingerprint")
        rec = cls(saved_layout, saved_catalog, student, teacher=adapter, encoder=encoder, info=info)
        # The folded tensors on disk must be what the saved heads fold to.
        stored = load_file(str(directory / "folded.safetensors"))
        fresh = rec.folded.to_tensors()
        if set(stored) != set(fresh) or any(not torch.allclose(stored[k], fresh[k], rtol=1e-5, atol=1e-6) for k in fresh):
            raise ValueError(f"{directory / 'folded.safetensors'} does not match student.safetensors (corrupted save?)")
        rec.folded = FoldedHeads.from_tensors(stored, rec.folded.num_levels, meta["ln_eps"])
        return rec


def _load_state(module: torch.nn.Module, path: Path) -> None:
    """Strict load of a safetensors state dict with a clear error."""
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"missing or corrupted {path}: {err}") from err
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit its config: {err}") from err


# ---------------------------------------------------------------- accelerate()

_STUDENT_OPTIONS = {"context_dim", "num_heads", "attn_dim", "ffn_dim", "head_hidden", "dropout"}
_DISTILL_OPTIONS = {f.name for f in fields(DistillConfig)}
_FEATURE_OPTIONS = {"feature_batch_size", "storage_dtype"}
_ENCODER_OPTIONS = {"encoder_ffn_dim", "encoder_layers", "encoder_dropout", "encoder_epochs", "encoder_lr",
                    "encoder_batch_size", "encoder_max_len"}


def _features_for(adapter, train_data, work_dir: Optional[Path], opts: dict, show_progress: bool) -> FeatureStore:
    """Teacher features: rank 0 extracts (or reuses) them under work_dir, other ranks then load them."""
    if isinstance(train_data, FeatureStore):
        return train_data
    kwargs = {"batch_size": opts.get("feature_batch_size", 128), "storage_dtype": opts.get("storage_dtype", "float16"),
              "show_progress": show_progress}
    rank, world = dist_info()
    if work_dir is None:
        return extract_features(adapter, train_data, None, **kwargs)
    if rank == 0:
        store = extract_features(adapter, train_data, work_dir / "features", **kwargs)
    barrier()
    return store if rank == 0 else load_features(work_dir / "features")


def _mlp_states(encoder: MLPEncoder, feats: FeatureStore, batch_size: int = 512) -> torch.Tensor:
    """The MLP encoder's states for every stored example, in the store's dtype and (N, T) grid."""
    out = torch.empty(feats.states.shape, dtype=feats.states.dtype)
    encoder.eval()
    with torch.no_grad():
        for s in range(0, len(feats), batch_size):
            out[s : s + batch_size] = encoder.states(
                feats.input_ids[s : s + batch_size], feats.mask[s : s + batch_size]
            ).to(out.dtype)
    return out


def accelerate(
    teacher,
    catalog: SIDCatalog,
    train_data,
    valid_data=None,
    replace_encoder: bool = False,
    *,
    layout: Optional[TokenLayout] = None,
    work_dir: Optional[str | Path] = None,
    init_student: Optional[SIDMLP] = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    **options,
) -> AcceleratedRecommender:
    """Distil SID-MLP heads (and, with replace_encoder, the SID-MLP++ MLP encoder) from a teacher.

    teacher: HF T5 / causal LM (wrapped by adapter_for) or a TeacherAdapter.
    train_data / valid_data: examples.Examples (train_data may also be a stored FeatureStore).
    work_dir: where features and resumable checkpoints live (rerun = resume).
    options: student sizes (head_hidden, num_heads, attn_dim, ffn_dim, context_dim, dropout),
    DistillConfig fields (lr, epochs, batch_size, alpha, temperature, patience, eval_beam, ...),
    feature_batch_size, storage_dtype, and encoder_* sizes/epochs for SID-MLP++.
    """
    unknown = set(options) - _STUDENT_OPTIONS - _DISTILL_OPTIONS - _FEATURE_OPTIONS - _ENCODER_OPTIONS
    if unknown:
        raise TypeError(
            f"unknown accelerate() options {sorted(unknown)}; valid: "
            f"{sorted(_STUDENT_OPTIONS | _DISTILL_OPTIONS | _FEATURE_OPTIONS | _ENCODER_OPTIONS)}"
        )
    adapter = as_adapter(teacher, catalog, layout)
    layout = adapter.layout
    work = Path(work_dir) if work_dir is not None else None
    rank, _ = dist_info()
    dcfg = DistillConfig(**{k: v for k, v in options.items() if k in _DISTILL_OPTIONS})
    model = getattr(adapter, "model", None)
    was_training = model.training if isinstance(model, torch.nn.Module) else None
    if was_training:
        model.eval()  # a frozen teacher: no dropout in its features
    try:
        feats = _features_for(adapter, train_data, work, options, show_progress)
        valid = None
        if valid_data is not None and rank == 0:
            states, mask, _ = encode_in_batches(adapter.encode, valid_data, desc="encode valid", show_progress=show_progress)
            valid = ValidSet(states, mask, valid_data.target_items)
        fingerprint = teacher_fingerprint(adapter)
        code_embs = [adapter.code_embeddings(j).detach().float().cpu() for j in range(layout.num_levels - 1)]
    finally:
        if was_training:
            model.train()
    encoder = None
    info: dict[str, Any] = {"teacher_fingerprint": fingerprint, "num_train_examples": len(feats)}
    if replace_encoder:
        # Default width 2*D keeps the MLP encoder cheaper per token than the teacher's attention encoder,
        # which is the point of SID-MLP++ (the paper code's 2048 is heavier than a small teacher).
        sizes = {"ffn_dim": options.get("encoder_ffn_dim") or 2 * adapter.hidden_size,
                 "num_layers": options.get("encoder_layers", 2),
                 "dropout": options.get("encoder_dropout", 0.1),
                 "max_len": options.get("encoder_max_len", max(512, feats.states.shape[1]))}
        torch.manual_seed(dcfg.seed)
        encoder = MLPEncoder.for_layout(layout, adapter.hidden_size, adapter, **sizes)
        ecfg = EncoderTrainConfig(epochs=options.get("encoder_epochs", 10), lr=options.get("encoder_lr", 1e-3),
                                  batch_size=options.get("encoder_batch_size", dcfg.batch_size), seed=dcfg.seed)
        res = train_mlp_encoder(encoder, feats, ecfg, checkpoint=work / "mlp_encoder.ckpt" if work else None,
                                show_progress=show_progress, log=log)
        info["encoder_history"] = res.history
        feats = feats.with_states(_mlp_states(encoder, feats))
        if valid is not None:
            states, mask, _ = encode_in_batches(encoder, valid_data, desc="encode valid (mlp)", show_progress=show_progress)
            valid = ValidSet(states, mask, valid_data.target_items)
    scfg = SIDMLPConfig(
        encoder_dim=adapter.hidden_size,
        codebook_sizes=tuple(layout.codebook_sizes),
        embed_dims=tuple(int(e.shape[1]) for e in code_embs),
        **{k: v for k, v in options.items() if k in _STUDENT_OPTIONS},
    )
    torch.manual_seed(dcfg.seed)
    student = SIDMLP(scfg, code_embs)
    if init_student is not None:
        if not isinstance(init_student, SIDMLP) or init_student.config.to_dict() != scfg.to_dict():
            got = init_student.config.to_dict() if isinstance(init_student, SIDMLP) else type(init_student).__name__
            raise ValueError(f"init_student must be a SIDMLP with this run's student config {scfg.to_dict()}, "
                             f"got {got}")
        student.load_state_dict(init_student.state_dict())
    name = "sidmlp_pp.ckpt" if replace_encoder else "sidmlp.ckpt"
    result: TrainResult = distill(student, feats, catalog, valid, dcfg, checkpoint=work / name if work else None,
                                  show_progress=show_progress, log=log)
    info.update({"distill": asdict(dcfg), "history": result.history, "best_valid_ndcg@10": result.best_metric,
                 "best_epoch": result.best_epoch})
    return AcceleratedRecommender(layout, catalog, student, teacher=None if replace_encoder else adapter,
                                  encoder=encoder, info=info)


# ---------------------------------------------------------------- evaluation, quickstart


