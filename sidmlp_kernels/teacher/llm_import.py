"""Import a MiniOneRec / LC-Rec / OpenOneRec teacher (an HF causal LM with SID tokens) into a teacher directory.

`import_llm_teacher(format, model, index, out, base_model=None)` reads the code base's
`save_pretrained` directory (model + tokenizer; for a PEFT LoRA adapter, `model` is the adapter
directory and `base_model` the model it was trained on, which gets the tokenizer's size and the
adapter merged in, as LC-Rec's test.py loads it; needs `pip install peft`) and its
`<name>.index.json` (OpenOneRec: its `sid2pid.json`, read by SIDIndex.read_sid2pid), and writes:

    out/config.json, model.safetensors   the (merged) model, marked as a "text"-prompt SID teacher
    out/tokenizer files                  the code base's tokenizer, SID tokens included
    out/layout.json                      TokenLayout kind "tokenizer" (each code's token id)
    out/teacher.json                     arch "causal-lm", the format, the prompt template, provenance
    out/sid_index.json                   the index as read (MiniOneRec's format; OpenOneRec: one entry per pid)
    out/catalog/, out/item_keys.json     the catalog (shared SIDs kept) and the index's item keys

`load_llm_teacher(out)` gives the LLMTeacher back; `load_teacher(out)` the (model, layout) pair.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

from ..errors import InvalidInput, MissingDependency
from ..io import ArtifactError, atomic_directory, read_meta, write_json
from .llm import LLMTeacher, PromptTemplate, SIDIndex, TEMPLATES, llm_teacher
from .models import load_teacher, save_teacher

__all__ = ["LLM_FORMATS", "import_llm_teacher", "load_llm_teacher"]

LLM_FORMATS = {"minionerec": "AkaliKong/MiniOneRec", "lcrec": "zhengbw0324/LC-Rec",
               "openonerec": "Kuaishou-OneRec/OpenOneRec"}


def _load_model(model_dir: Path, base_model: Optional[Path], tokenizer):
    """The causal LM of a save_pretrained directory, or a LoRA adapter merged into its base model."""
    from transformers import AutoModelForCausalLM

    if base_model is None:
        if (model_dir / "adapter_config.json").is_file():
            raise InvalidInput(f"{model_dir} holds a PEFT adapter (adapter_config.json): pass --base-model, the "
                               "model it was trained on")
        return AutoModelForCausalLM.from_pretrained(str(model_dir))
    try:
        from peft import PeftModel
    except ImportError as err:
        raise MissingDependency("a LoRA adapter needs peft: pip install 'sidmlp-kernels[lora]' (or peft)") from err
    if not (model_dir / "adapter_config.json").is_file():
        raise InvalidInput(f"--base-model was given but {model_dir} holds no PEFT adapter (adapter_config.json)")
    base = AutoModelForCausalLM.from_pretrained(str(base_model))
    base.resize_token_embeddings(len(tokenizer))  # the SID tokens, as LC-Rec's test.py does before loading
    return PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()


def import_llm_teacher(format: str, model: str | Path, index: str | Path, out: str | Path,
                       base_model: Optional[str | Path] = None, template: Optional[PromptTemplate | str] = None):
    """Import a MiniOneRec / LC-Rec / OpenOneRec model and its SID index into the teacher directory `out` (module
    docstring).

    Returns (model, layout, catalog) as written.
    """
    from transformers import AutoTokenizer

    if format not in LLM_FORMATS:
        raise InvalidInput(f"format must be one of {sorted(LLM_FORMATS)}, got {format!r}")
    model_dir, index_path = Path(model), Path(index)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no model directory at {model_dir}")
    if Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        raise InvalidInput(f"out {out} exists and is not an empty directory; choose a new one")
    sid_index = SIDIndex.read_sid2pid(index_path) if format == "openonerec" else SIDIndex.read(index_path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lm = _load_model(model_dir, Path(base_model) if base_model is not None else None, tokenizer).eval()
    teacher = llm_teacher(lm, tokenizer, sid_index, format, template)
    with atomic_directory(Path(out)) as tmp:
        save_teacher(lm, teacher.layout, tmp, info={
            "arch": "causal-lm", "llm_format": format, "template": asdict(teacher.template),
            "catalog_fingerprint": teacher.catalog.fingerprint(),
            "imported_from": {"format": format, "code_base": LLM_FORMATS[format], "model": str(model_dir),
                              "index": str(index_path), "base_model": None if base_model is None else str(base_model)}})
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "sid_index.json", {k: list(t) for k, t in zip(sid_index.keys, sid_index.tokens)})
        teacher.catalog.save(tmp / "catalog")
        write_json(tmp / "item_keys.json", {"item_ids": sid_index.item_ids().tolist(), "keys": sid_index.keys})
    return lm, teacher.layout, teacher.catalog


def load_llm_teacher(directory: str | Path, device: str = "cpu") -> LLMTeacher:
    """The LLMTeacher of a directory import_llm_teacher wrote (model, tokenizer, layout, catalog, template)."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    hint = "re-create it with `sidmlp import --format minionerec|lcrec|openonerec`"
    meta = read_meta(directory / "teacher.json", "sidmlp-teacher", 1, required=("arch", "llm_format", "template"),
                     hint=hint)
    model, layout = load_teacher(directory, device=device)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    index = SIDIndex.read(directory / "sid_index.json")
    try:
        template = PromptTemplate(**{**meta["template"], "parts": tuple(meta["template"]["parts"])})
    except (TypeError, ValueError) as err:
        raise ArtifactError(directory / "teacher.json", f"holds no valid prompt template ({err})", hint) from err
    if meta["llm_format"] not in TEMPLATES:
        raise ArtifactError(directory / "teacher.json", f"names unknown format {meta['llm_format']!r}", hint)
    teacher = llm_teacher(model, tokenizer, index, meta["llm_format"], template)
    if teacher.layout != layout:
        raise ArtifactError(directory / "layout.json", "does not match the tokenizer's SID token ids", hint)
    return teacher
