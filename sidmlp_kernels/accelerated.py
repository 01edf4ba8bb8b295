"""accelerate(): distil a teacher into SID-MLP heads; AcceleratedRecommender serves them.

generate() runs, per batch of users: the encoder once (the teacher's, or the SID-MLP++ MLP
encoder), the context readout once, project_context once, then the constrained beam search
over the folded heads (decode/backends.py). The encoder output is never copied per beam:
ctx_proj rows broadcast over beams inside the step.

AcceleratedRecommender is an nn.Module (eval(), to(), state_dict()) holding the student and,
for SID-MLP++, the MLP encoder; a SID-MLP model runs on its teacher's encoder, which it uses
but does not own (it is not a submodule: not saved, not moved by .to()).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn

from .configs import AccelerateConfig
from .data.catalog import SIDCatalog
from .data.layout import TokenLayout, layout_from_dict
from .decode.backends import decode_folded
from .decode.folded import FoldedHeads, project_context
from .decode.types import Encoded, GenerateOutput, GenerationOutput, check_beam_args, check_generate_args
from .distill.distill import ValidSet, distill
from .distill.features import (FeatureStore, encode_in_batches, extract_features, load_features, teacher_fingerprint,
                               teacher_top_items)
from .distill.mlp_encoder import MLPEncoder, MLPEncoderConfig, train_mlp_encoder
from .distill.student import SIDMLP, SIDMLPConfig
from .io import ArtifactError, load_tensors, provenance, read_meta, save_tensors, write_meta
from .teacher.adapters import CausalLMTeacherAdapter, as_adapter, prompt_format
from .teacher.hf_output import SequenceFormat, hf_output
from .training import TrainResult, barrier, dist_info, forked_rng
from .errors import InvalidInput, InvalidInputType

__all__ = ["AcceleratedRecommender", "AccelerateConfig", "accelerate", "new_mlp_encoder", "new_student", "FORMAT_VERSION",
           "INFERENCE_DTYPES"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FORMAT = "sidmlp-accelerated"
_META = "accelerated.json"
# generate()'s encoder dtypes. bfloat16 runs the encoder (the teacher's or the MLP encoder: ~90% of generate()'s
# time) under torch.autocast; weights stay float32, so neither model is changed. The context readout and the
# heads stay float32 in generate(): on the ML-100K quickstart SID-MLP each of them in bf16 cost about 0.7 points
# of top-10 overlap with fp32 for a few percent of the time (bench/results/bf16_ml100k.json, "ablation");
# context_projection(dtype=) and decode(dtype=) still offer it.
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_dtype(dtype, name: str = "dtype") -> torch.dtype:
    """torch.float32 or torch.bfloat16 (or their names); anything else is an InvalidInput naming `name`."""
    value = INFERENCE_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if value not in INFERENCE_DTYPES.values():
        raise InvalidInput(f"{name} must be torch.float32 or torch.bfloat16 (or their names), got {dtype!r}")
    return value


@contextlib.contextmanager
def _eval_mode(*modules: Optional[nn.Module]) -> Iterator[None]:
    """Every module in eval mode inside the block; each gets its own mode back afterwards."""
    present = [m for m in modules if isinstance(m, nn.Module)]
    modes = [[(sub, sub.training) for sub in m.modules()] for m in present]
    for m in present:
        m.eval()
    try:
        yield
    finally:
        for pairs in modes:
            for sub, mode in pairs:
                sub.training = mode


class AcceleratedRecommender(nn.Module):
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
        super().__init__()
        layout.validate_against(catalog)
        if (teacher is None) == (encoder is None):
            raise InvalidInput("give exactly one encoder: the teacher adapter (SID-MLP) or an MLPEncoder (SID-MLP++)")
        if not isinstance(student, SIDMLP):
            raise InvalidInputType(f"student must be a SIDMLP, got {type(student).__name__}")
        if tuple(student.config.codebook_sizes) != tuple(catalog.codebook_sizes):
            raise InvalidInput(
                f"student codebook_sizes {student.config.codebook_sizes} != catalog {catalog.codebook_sizes}"
            )
        adapter = as_adapter(teacher, catalog, layout) if teacher is not None else None
        hidden = adapter.hidden_size if adapter is not None else encoder.config.hidden_size
        if hidden != student.config.encoder_dim:
            raise InvalidInput(f"encoder width {hidden} != student encoder_dim {student.config.encoder_dim}")
        self.layout = layout
        self.catalog = catalog
        self.student = student
        self.encoder = encoder
        # Plain attributes, not submodules: the teacher belongs to its owner.
        self.__dict__["teacher"] = adapter
        self.folded: FoldedHeads = student.fold()
        # Decode backend: None picks automatically (CUDA -> Triton + CUDA ops, CPU -> C++ ops,
        # no extension -> PyTorch reference; SIDMLP_BACKEND overrides), or 'reference'|'cpu'|'triton'.
        self.backend: Optional[str] = None
        # The encoder's dtype in generate() and encode() when their dtype argument is None
        # (from_pretrained(dtype=) sets it).
        self.compute_dtype: torch.dtype = torch.float32
        self.info = dict(info or {})
        # How the teacher's HF generate lays out sequences (generate()'s HF convention): from the teacher's
        # model, else as recorded by accelerate() (SID-MLP++ keeps no teacher), else an encoder-decoder.
        model = getattr(adapter, "model", None)
        if SequenceFormat.known(model):
            self.sequence_format = SequenceFormat.of(model)
        else:
            self.sequence_format = SequenceFormat.from_dict(self.info.get("sequence_format"))
        self.info["sequence_format"] = self.sequence_format.to_dict()
        self.eval()

    # ---------------------------------------------------------------- nn.Module plumbing

    def _apply(self, fn, recurse: bool = True):
        # .to() / .float() / .cuda() move the folded tensors with the heads they were folded from.
        super()._apply(fn, recurse)
        self.folded = self.folded.apply(fn)
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module.load_state_dict, then re-fold the heads from the loaded weights."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.folded = self.student.fold()
        return result

    @property
    def device(self) -> torch.device:
        """Device of the heads (inputs must live there too)."""
        return self.folded.out_weight[0].device

    @property
    def uses_teacher_encoder(self) -> bool:
        """True for SID-MLP (teacher encoder), False for SID-MLP++ (MLP encoder)."""
        return self.encoder is None

    def _inference(self, with_teacher: bool = False, dtype: Optional[torch.dtype] = None) -> contextlib.ExitStack:
        """inference_mode with this model (and, for encoding, the teacher) in eval mode; modes restored after.

        Only encoding runs the teacher, so the per-digit decode does not walk the teacher's modules.
        dtype bfloat16 adds a bf16 autocast on the devices involved (None: float32, none).
        """
        stack = contextlib.ExitStack()
        teacher_model = getattr(self.teacher, "model", None) if with_teacher else None
        stack.enter_context(_eval_mode(self, teacher_model))
        stack.enter_context(torch.inference_mode())
        if dtype is not None and check_dtype(dtype) == torch.bfloat16:
            devices = {self.device.type, self.encoder_device.type} if with_teacher else {self.device.type}
            for device_type in sorted(devices):
                stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
        return stack

    # ---------------------------------------------------------------- serving

    @property
    def encoder_device(self) -> torch.device:
        """Where inputs must live: the MLP encoder's device, or the teacher's for SID-MLP."""
        if self.encoder is not None:
            return self.device
        model = getattr(self.teacher, "model", None)
        params = next(model.parameters(), None) if isinstance(model, nn.Module) else None
        return params.device if params is not None else self.device

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """ValueError for bad inputs: shapes, token ids outside the layout, empty histories, wrong device."""
        expected = self.encoder_device
        for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if isinstance(tensor, torch.Tensor) and tensor.device != expected:
                owner = "the MLP encoder" if self.encoder is not None else "the teacher's encoder"
                raise InvalidInput(f"{name} is on {tensor.device} but {owner} is on {expected}; move the batch there")
        # A text prompt (a 'tokenizer' layout) may use any token of the teacher's vocabulary.
        model = getattr(self.teacher, "model", None)
        vocab = model.get_input_embeddings().weight.shape[0] if not self.layout.contiguous and model is not None \
            else None
        self.layout.check_inputs(input_ids, attention_mask, vocab_size=vocab)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               dtype: Optional[torch.dtype] = None) -> Encoded:
        """Encoder states once per user (teacher encoder or MLP encoder), computed in `dtype` (None: compute_dtype)."""
        self.check_inputs(input_ids, attention_mask)
        with self._inference(with_teacher=True, dtype=self.compute_dtype if dtype is None else dtype):
            if self.encoder is not None:
                return self.encoder(input_ids, attention_mask)
            return self.teacher.encode(input_ids, attention_mask)

    def context_projection(self, encoded: Encoded, dtype: Optional[torch.dtype] = None) -> list[torch.Tensor]:
        """Per head, the (B, H) first-layer contribution of the user context: once per user (float32 out).

        dtype bfloat16 runs the readout under a bf16 autocast (None: float32, as generate() runs it).
        """
        with self._inference(dtype=dtype):
            # A teacher encoder may live on another device than the heads: bring its (B, T, D) output over once.
            ctx = self.student.context(encoded.states.float().to(self.device), encoded.mask.to(self.device))
            # float32 whatever the compute dtype: every decode backend takes the same inputs.
            return [p.float() for p in project_context(self.folded, ctx)]

    def decode(self, ctx_proj: list[torch.Tensor], beam_size: int = 50, top_n: int = 10,
               dtype: Optional[torch.dtype] = None) -> GenerationOutput:
        """Constrained beam search over the folded heads on the selected backend (decode/backends.py).

        dtype bfloat16: the heads' GEMMs of the reference and cpu backends run in bf16 (autocast; None:
        float32, as generate() runs them); the fused Triton step computes in float32 either way;
        beam scores are float32.
        """
        with self._inference(dtype=dtype):
            return decode_folded(self.folded, ctx_proj, self.catalog, beam_size, top_n, backend=self.backend)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        beam_size: Optional[int] = None,
        top_n: Optional[int] = None,
        *,
        num_beams: Optional[int] = None,
        num_return_sequences: Optional[int] = None,
        return_dict_in_generate: bool = False,
        output_scores: bool = False,
        length_penalty: float = 1.0,
        dtype: Optional[torch.dtype] = None,
    ) -> Union[GenerationOutput, GenerateOutput, torch.Tensor]:
        """Top catalog items per user (ranked, distinct, all valid) for inputs in the teacher's layout.

        Two calling conventions:
        - HF generate's (keywords): `generate(input_ids, attention_mask=None, num_beams=50,
          num_return_sequences=10, return_dict_in_generate=False, output_scores=False)` returns
          `sequences` (B * num_return_sequences, S) in the teacher's own token ids, laid out as HF
          generate returns them for that teacher (teacher/hf_output.py), or with
          return_dict_in_generate a GenerateOutput (sequences, sequences_scores with output_scores,
          items, codes, scores). attention_mask=None means all ones.
        - this package's: `generate(input_ids, attention_mask, beam_size, top_n)` (beam_size or
          top_n given, by position or name) returns GenerationOutput(items, codes, scores).
        Mixing the two is a TypeError. dtype (either convention; None: self.compute_dtype, float32 unless
        from_pretrained(dtype=) said otherwise): the encoder's, torch.float32 or torch.bfloat16 (a bf16
        autocast; weights unchanged); the context readout, heads and beam scores stay float32.
        A catalog with shared SIDs returns every item of each ranked SID
        (SIDCatalog.expand: (B, N) SIDs -> (B, M) items; HF-style sequences stay one per SID).

        Deterministic: runs under torch.inference_mode() with every module in eval mode, whatever
        mode the caller left the teacher or this model in (their modes are restored afterwards).
        """
        if isinstance(input_ids, torch.Tensor) and attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if beam_size is not None or top_n is not None:
            hf_args = [name for name, value, default in (
                ("num_beams", num_beams, None), ("num_return_sequences", num_return_sequences, None),
                ("return_dict_in_generate", return_dict_in_generate, False), ("output_scores", output_scores, False),
                ("length_penalty", length_penalty, 1.0)) if value != default]
            if hf_args:
                raise InvalidInputType(
                    f"generate() got beam_size/top_n (returns GenerationOutput) and HF's {', '.join(hf_args)} "
                    "(returns sequences): use one convention")
            beam_size, top_n = 50 if beam_size is None else beam_size, 10 if top_n is None else top_n
            check_beam_args(beam_size, top_n)
            return self.catalog.expand(self._ranked(input_ids, attention_mask, beam_size, top_n, dtype))
        num_beams = 50 if num_beams is None else num_beams
        num_return_sequences = 10 if num_return_sequences is None else num_return_sequences
        check_generate_args(num_beams, num_return_sequences, length_penalty)
        out = self._ranked(input_ids, attention_mask, num_beams, num_return_sequences, dtype)
        return hf_output(out, self.layout, self.sequence_format, input_ids, attention_mask,
                         length_penalty=length_penalty, return_dict_in_generate=return_dict_in_generate,
                         output_scores=output_scores, catalog=self.catalog)

    def _ranked(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, beam_size: int,
                top_n: int, dtype: Optional[torch.dtype] = None) -> GenerationOutput:
        """encode (in dtype) -> context projection -> constrained decode of the folded heads (float32)."""
        dtype = check_dtype(self.compute_dtype if dtype is None else dtype)
        with self._inference(with_teacher=True):
            encoded = self.encode(input_ids, attention_mask, dtype)
            return self.decode(self.context_projection(encoded), beam_size, top_n)

    def generate_batched(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, beam_size: int = 50, top_n: int = 10,
        batch_size: int = 256, dtype: Optional[torch.dtype] = None,
    ) -> GenerationOutput:
        """generate() over many users in chunks of batch_size (bounded memory)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput(f"batch_size must be an int >= 1, got {batch_size!r}")
        check_beam_args(beam_size, top_n)
        self.check_inputs(input_ids, attention_mask)  # also refuses an empty batch, before any work
        outs = [
            self._ranked(input_ids[s : s + batch_size], attention_mask[s : s + batch_size], beam_size, top_n, dtype)
            for s in range(0, input_ids.shape[0], batch_size)
        ]
        return GenerationOutput(*(torch.cat([getattr(o, f) for o in outs]) for f in ("items", "codes", "scores")))

    # ---------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path) -> None:
        """Write heads, folded tensors, encoder (SID-MLP++), catalog, layout and config (safetensors + JSON)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _META).unlink(missing_ok=True)  # written last: marks a complete save
        save_tensors(self.student.state_dict(), directory / "student.safetensors")
        save_tensors(self.folded.to_tensors(), directory / "folded.safetensors")
        if self.encoder is not None:
            save_tensors(self.encoder.state_dict(), directory / "mlp_encoder.safetensors")
        self.catalog.save(directory / "catalog")
        write_meta(directory / _META, _FORMAT, FORMAT_VERSION, {
            "encoder": "mlp" if self.encoder is not None else "teacher",
            "student_config": self.student.config.to_dict(),
            "encoder_config": self.encoder.config.to_dict() if self.encoder is not None else None,
            "layout": self.layout.to_dict(),
            "catalog_fingerprint": self.catalog.fingerprint(),
            "teacher_fingerprint": self.info.get("teacher_fingerprint")
            or (teacher_fingerprint(self.teacher) if self.teacher is not None else None),
            "ln_eps": self.folded.ln_eps,
            "info": {k: v for k, v in self.info.items() if k != "teacher_fingerprint"},
        })

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        teacher=None,
        catalog: Optional[SIDCatalog] = None,
        layout: Optional[TokenLayout] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> "AcceleratedRecommender":
        """Load and validate a saved recommender; SID-MLP needs its teacher, catalog/layout are checked if given.

        dtype (torch.float32 or torch.bfloat16) sets compute_dtype, the default dtype of generate()'s encoder.
        """
        dtype = torch.float32 if dtype is None else check_dtype(dtype)
        directory = Path(directory)
        meta_path = directory / _META
        if not meta_path.is_file():
            raise FileNotFoundError(f"no accelerated recommender in {directory} ({_META} missing)")
        hint = "re-create it with `sidmlp distill`"
        meta = read_meta(meta_path, _FORMAT, FORMAT_VERSION, hint=hint, required=(
            "encoder", "student_config", "encoder_config", "layout", "catalog_fingerprint", "ln_eps"))
        try:
            saved_layout = layout_from_dict(meta["layout"])
            student = SIDMLP(SIDMLPConfig.from_dict(meta["student_config"]))
        except (TypeError, ValueError) as err:
            raise ArtifactError(meta_path, f"invalid layout or student_config ({err})", hint) from err
        saved_catalog = SIDCatalog.load(directory / "catalog")
        if saved_catalog.fingerprint() != meta["catalog_fingerprint"]:
            raise ArtifactError(directory / "catalog", "does not match the catalog this model was saved with", hint)
        if layout is not None and layout != saved_layout:
            raise InvalidInput(f"layout mismatch: {directory} was built for {saved_layout}, got {layout}")
        if catalog is not None and catalog != saved_catalog:
            raise InvalidInput(
                f"catalog mismatch: {directory} was built for {saved_catalog} "
                f"(fingerprint {meta['catalog_fingerprint']}), got {catalog} "
                f"(fingerprint {catalog.fingerprint()}); distil again for the new catalog"
            )
        _load_state(student, directory / "student.safetensors", hint)
        encoder = adapter = None
        if meta["encoder"] == "mlp":
            try:
                encoder = MLPEncoder(MLPEncoderConfig.from_dict(meta["encoder_config"]))
            except (TypeError, ValueError) as err:
                raise ArtifactError(meta_path, f"invalid encoder_config ({err})", hint) from err
            _load_state(encoder, directory / "mlp_encoder.safetensors", hint)
            if teacher is not None:
                as_adapter(teacher, saved_catalog, saved_layout)  # only validated: SID-MLP++ does not need it
        elif meta["encoder"] == "teacher":
            if teacher is None:
                raise InvalidInput(
                    f"{directory} is a SID-MLP model that runs on its teacher's encoder: pass teacher= "
                    "(the HF model or its adapter)"
                )
            try:
                adapter = as_adapter(teacher, saved_catalog, saved_layout)
            except ValueError as err:
                raise InvalidInput(f"teacher does not match {directory}: {err}") from err
            got = teacher_fingerprint(adapter)
            if meta.get("teacher_fingerprint") and got != meta["teacher_fingerprint"]:
                raise InvalidInput(
                    f"teacher mismatch: {directory} was distilled from teacher {meta['teacher_fingerprint']}, "
                    f"this teacher's code embeddings hash to {got}"
                )
        else:
            raise ArtifactError(meta_path, f"unknown encoder kind {meta['encoder']!r}", hint)
        info = dict(meta.get("info") or {})
        info["teacher_fingerprint"] = meta.get("teacher_fingerprint")
        rec = cls(saved_layout, saved_catalog, student, teacher=adapter, encoder=encoder, info=info)
        # The folded tensors on disk must be what the saved heads fold to.
        folded_path = directory / "folded.safetensors"
        stored = load_tensors(folded_path, hint)
        fresh = rec.folded.to_tensors()
        if set(stored) != set(fresh) or any(
            stored[k].shape != fresh[k].shape or not torch.allclose(stored[k], fresh[k], rtol=1e-5, atol=1e-6)
            for k in fresh
        ):
            raise ArtifactError(folded_path, "does not match student.safetensors (corrupted save?)", hint)
        rec.folded = FoldedHeads.from_tensors(stored, rec.folded.num_levels, meta["ln_eps"])
        rec.compute_dtype = dtype
        return rec

    # The names this class had before it followed the HF convention.
    save = save_pretrained
    load = from_pretrained


def _load_state(module: nn.Module, path: Path, hint: str) -> None:
    """Strict load of a safetensors state dict with a clear error naming the file."""
    state = load_tensors(path, hint)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ArtifactError(path, f"does not fit its config ({err})", hint) from err


# ---------------------------------------------------------------- accelerate()


def _features_for(adapter, catalog: SIDCatalog, train_data, work_dir: Optional[Path], config: AccelerateConfig,
                  show_progress: bool) -> FeatureStore:
    """Teacher features: rank 0 extracts (or reuses) them under work_dir, other ranks then load them."""
    if isinstance(train_data, FeatureStore):
        return train_data
    kwargs = {"batch_size": config.feature_batch_size, "storage_dtype": config.storage_dtype,
              "show_progress": show_progress, "catalog": catalog, "teacher_beam": config.teacher_beam}
    rank, _ = dist_info()
    if work_dir is None:
        return extract_features(adapter, train_data, None, **kwargs)
    if rank == 0:
        store = extract_features(adapter, train_data, work_dir / "features", **kwargs)
    barrier()
    return store if rank == 0 else load_features(work_dir / "features")


def _mlp_states(encoder: MLPEncoder, feats: FeatureStore, batch_size: int = 512) -> torch.Tensor:
    """The MLP encoder's states for every stored example, in the store's dtype and (N, T) grid."""
    out = torch.empty(feats.states.shape, dtype=feats.states.dtype)
    with _eval_mode(encoder), torch.no_grad():
        for s in range(0, len(feats), batch_size):
            out[s : s + batch_size] = encoder.states(
                feats.input_ids[s : s + batch_size], feats.mask[s : s + batch_size]
            ).to(out.dtype)
    return out


def new_student(adapter, config: Optional[AccelerateConfig] = None, seed: Optional[int] = None) -> SIDMLP:
    """A freshly initialised SIDMLP for a teacher adapter: sizes from config.student, the frozen code
    embeddings from the teacher, initial weights from `seed` (default config.distill.seed) in a forked RNG."""
    cfg = config or AccelerateConfig()
    layout = adapter.layout
    code_embs = [adapter.code_embeddings(j).detach().float().cpu() for j in range(layout.num_levels - 1)]
    scfg = SIDMLPConfig(
        encoder_dim=adapter.hidden_size,
        codebook_sizes=tuple(layout.codebook_sizes),
        embed_dims=tuple(int(e.shape[1]) for e in code_embs),
        **asdict(cfg.student),
    )
    with forked_rng(cfg.distill.seed if seed is None else seed):
        return SIDMLP(scfg, code_embs)


def new_mlp_encoder(adapter, config: Optional[AccelerateConfig] = None, max_input_len: int = 0,
                    seed: Optional[int] = None) -> MLPEncoder:
    """A freshly initialised SID-MLP++ MLP encoder for a teacher adapter (sizes from config.encoder).

    Unset sizes resolve to: width 2 x the teacher's (cheaper per token than its attention encoder,
    which is the point of SID-MLP++), positions max(512, max_input_len); mixer "auto" to "causal" for a
    decoder-only teacher (its states see only earlier tokens), the paper's "mean" otherwise.
    """
    cfg = config or AccelerateConfig()
    sizes = cfg.encoder
    mixer = sizes.mixer
    causal = isinstance(adapter, CausalLMTeacherAdapter)
    if mixer == "auto":
        mixer = "causal" if causal else "mean"
    # The teacher's prompt (hence every stored state) may lack the inputs' EOS: the encoder then drops it too.
    strip_eos = causal and prompt_format(adapter.model) == "items"
    with forked_rng(cfg.distill.seed if seed is None else seed):
        return MLPEncoder.for_layout(
            adapter.layout, adapter.hidden_size, adapter, ffn_dim=sizes.ffn_dim or 2 * adapter.hidden_size,
            num_layers=sizes.layers, dropout=sizes.dropout, max_len=sizes.max_len or max(512, max_input_len),
            mixer=mixer, strip_eos_id=adapter.layout.eos_id if strip_eos else None,
        )


def accelerate(
    teacher,
    catalog: SIDCatalog,
    train_data,
    valid_data=None,
    config: Optional[AccelerateConfig] = None,
    *,
    layout: Optional[TokenLayout] = None,
    work_dir: Optional[str | Path] = None,
    init_student: Optional[SIDMLP] = None,
    show_progress: bool = False,
    **overrides: Any,
) -> AcceleratedRecommender:
    """Distil SID-MLP heads (and, with replace_encoder=True, the SID-MLP++ MLP encoder) from a teacher.

    teacher: HF T5 / causal LM (wrapped by adapter_for) or a TeacherAdapter; it is used frozen,
    in eval mode, and handed back in the mode it came in.
    train_data / valid_data: data.examples.Examples (train_data may also be a stored FeatureStore).
    config: an AccelerateConfig; keyword overrides set any of its fields by name
    (`accelerate(t, c, train, epochs=5, head_hidden=256, replace_encoder=True, encoder_epochs=4)`).
    work_dir: where features and resumable checkpoints live (rerun = resume).
    The global RNG is left as it was: the student's and encoder's initial weights come from
    config.distill.seed inside a forked RNG.
    """
    if config is not None and not isinstance(config, AccelerateConfig):
        raise InvalidInputType(f"config must be an AccelerateConfig, got {type(config).__name__}")
    cfg = (config or AccelerateConfig()).with_overrides(**overrides)
    dcfg = cfg.distill
    adapter = as_adapter(teacher, catalog, layout)
    layout = adapter.layout
    if cfg.replace_encoder and not layout.contiguous:
        # An LLM's text prompt: the MLP encoder (one embedding per vocabulary token, mean-pooled context, no
        # attention) would have to relearn the LLM's reading of the text; SID-MLP keeps the LLM's prefill.
        raise InvalidInput("replace_encoder=True (SID-MLP++) does not apply to a text-prompt LLM teacher ('tokenizer' "
                           "layout): use SID-MLP (replace_encoder=False), whose context is the LLM's prompt states")
    work = Path(work_dir) if work_dir is not None else None
    rank, _ = dist_info()
    with _eval_mode(getattr(adapter, "model", None)):  # a frozen teacher: no dropout in its features
        feats = _features_for(adapter, catalog, train_data, work, cfg, show_progress)
        valid = None
        if valid_data is not None and rank == 0:
            states, mask, _ = encode_in_batches(adapter.encode, valid_data, desc="encode valid",
                                                show_progress=show_progress)
            top = None if dcfg.select_by != "teacher" else teacher_top_items(
                adapter, catalog, valid_data, dcfg.eval_beam, show_progress=show_progress)
            valid = ValidSet(states, mask, valid_data.target_items, teacher_items=top)
        fingerprint = teacher_fingerprint(adapter)
        student = new_student(adapter, cfg)
    encoder = None
    info: dict[str, Any] = {"teacher_fingerprint": fingerprint, "num_train_examples": len(feats),
                            "provenance": provenance({"teacher": fingerprint, "catalog": catalog.fingerprint(),
                                                      "train_examples": len(feats)})}
    teacher_model = getattr(adapter, "model", None)
    if SequenceFormat.known(teacher_model):
        info["sequence_format"] = SequenceFormat.of(teacher_model).to_dict()  # SID-MLP++ keeps no teacher
    if cfg.replace_encoder:
        encoder = new_mlp_encoder(adapter, cfg, max_input_len=feats.states.shape[1])
        ecfg = cfg.encoder_training if cfg.encoder_training.seed == dcfg.seed else \
            type(cfg.encoder_training)(**{**asdict(cfg.encoder_training), "seed": dcfg.seed})
        res = train_mlp_encoder(encoder, feats, ecfg, checkpoint=work / "mlp_encoder.ckpt" if work else None,
                                show_progress=show_progress)
        info["encoder_history"] = res.history
        if not cfg.joint_encoder:  # stage 2 reads fixed MLP-encoder states
            feats = feats.with_states(_mlp_states(encoder, feats))
        if valid is not None:
            states, mask, ids = encode_in_batches(encoder, valid_data, desc="encode valid (mlp)",
                                                  show_progress=show_progress)
            valid = ValidSet(states, mask, valid_data.target_items, input_ids=ids, teacher_items=valid.teacher_items)
    scfg = student.config
    if init_student is not None:
        # Dropout shapes no weight: a continued run may change it; every size must match.
        def shape(config):
            return {k: v for k, v in config.to_dict().items() if k != "dropout"}

        # A readout change (e.g. SID-MLP++ heads from a pool+last SID-MLP) converts the heads' first layer.
        if isinstance(init_student, SIDMLP) and init_student.config.readout != scfg.readout:
            init_student = init_student.with_readout(scfg.readout)
        if not isinstance(init_student, SIDMLP) or shape(init_student.config) != shape(scfg):
            got = shape(init_student.config) if isinstance(init_student, SIDMLP) else type(init_student).__name__
            raise InvalidInput(f"init_student must be a SIDMLP with this run's student sizes {shape(scfg)}, "
                             f"got {got}")
        student.load_state_dict(init_student.state_dict())
    name = "sidmlp_pp.ckpt" if cfg.replace_encoder else "sidmlp.ckpt"
    logger.info("distilling %s from %d teacher examples", "SID-MLP++" if cfg.replace_encoder else "SID-MLP", len(feats))
    result: TrainResult = distill(student, feats, catalog, valid, dcfg, checkpoint=work / name if work else None,
                                  show_progress=show_progress,
                                  encoder=encoder if cfg.replace_encoder and cfg.joint_encoder else None)
    info.update({"config": asdict(cfg), "distill": asdict(dcfg), "history": result.history,
                 f"best_valid_{'teacher_overlap' if dcfg.select_by == 'teacher' else 'ndcg'}@10": result.best_metric,
                 "best_epoch": result.best_epoch})
    return AcceleratedRecommender(layout, catalog, student, teacher=None if cfg.replace_encoder else adapter,
                                  encoder=encoder, info=info)
