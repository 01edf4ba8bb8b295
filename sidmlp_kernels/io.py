"""Saved artifacts: format-versioned JSON, safetensors, atomic writes, validated loads.

Every artifact directory of the package (catalog, prepared data, teacher, features, accelerated
model, SASRec) writes its metadata through `write_meta` and reads it back through `read_meta`, so
each load checks the same things in the same words: the file exists, parses, is the expected
format and version, and has the keys the reader needs. Every error is an `ArtifactError` (a
ValueError) that names the file, the problem and how to re-create the artifact.

Writes are atomic: a temporary sibling is written and then renamed over the target, so a crash
never leaves a half-written file or directory behind.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from .errors import InvalidInput

__all__ = [
    "ArtifactError",
    "provenance",
    "atomic_directory",
    "load_tensors",
    "read_json",
    "read_meta",
    "save_tensors",
    "write_json",
    "write_meta",
]


class ArtifactError(InvalidInput):
    """A saved artifact is missing, corrupt, of another format or version, or incomplete."""

    def __init__(self, path: str | Path, problem: str, hint: str = ""):
        self.path = Path(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def write_json(path: str | Path, obj: Any, *, indent: Optional[int] = 2) -> None:
    """Write `obj` as JSON, atomically."""
    path = Path(path)
    tmp = _temp_sibling(path)
    separators = (",", ":") if indent is None else None
    tmp.write_text(json.dumps(obj, indent=indent, separators=separators))
    os.replace(tmp, path)


def read_json(path: str | Path, hint: str = "") -> Any:
    """Parse a JSON file; ArtifactError naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(path, "file is missing", hint)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(path, f"corrupted: not valid JSON ({err})", hint) from err


def write_meta(path: str | Path, fmt: str, version: int, fields: Mapping[str, Any], *,
               indent: Optional[int] = 2) -> None:
    """Write an artifact's metadata file: {"format": fmt, "format_version": version, **fields}, atomically."""
    write_json(path, {"format": fmt, "format_version": version, **fields}, indent=indent)


def read_meta(
    path: str | Path,
    fmt: str,
    version: int,
    required: Sequence[str] = (),
    hint: str = "",
    *,
    legacy_format_key: Optional[tuple[str, str]] = None,
) -> dict[str, Any]:
    """Read and check metadata written by `write_meta`; returns the dict.

    legacy_format_key=(key, value): files of this version written before they carried a
    "format" key are recognised by meta[key] == value instead.
    """
    path = Path(path)
    meta = read_json(path, hint)
    if not isinstance(meta, dict):
        raise ArtifactError(path, f"expected a JSON object, found {type(meta).__name__}", hint)
    found = meta.get("format")
    if found is None and legacy_format_key is not None and meta.get(legacy_format_key[0]) == legacy_format_key[1]:
        found = fmt
    if found != fmt:
        raise ArtifactError(path, f"not a {fmt} file (format={found!r})", hint)
    if meta.get("format_version") != version:
        raise ArtifactError(
            path, f"format_version {meta.get('format_version')!r}, but this version of sidmlp-kernels reads "
            f"{version}", hint or "re-create it with this version"
        )
    missing = [key for key in required if key not in meta]
    if missing:
        raise ArtifactError(path, f"missing required key(s) {missing}", hint)
    return meta


def save_tensors(tensors: Mapping[str, Any], path: str | Path, metadata: Optional[dict[str, str]] = None) -> None:
    """Write tensors as safetensors (made contiguous), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _temp_sibling(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: str | Path, hint: str = "", expected: Optional[Sequence[str]] = None,
                 device: str = "cpu") -> dict[str, Any]:
    """Read a safetensors file; ArtifactError naming the file when missing, corrupt or lacking keys."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(path, "file is missing", hint)
    try:
        tensors = load_file(str(path), device=device)
    except Exception as err:  # safetensors raises its own error types (truncated header, bad offsets)
        raise ArtifactError(path, f"corrupted: not a readable safetensors file ({err})", hint) from err
    if expected is not None and set(tensors) != set(expected):
        raise ArtifactError(
            path, f"holds tensors {sorted(tensors)}, expected {sorted(expected)}", hint
        )
    return tensors


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Write a directory in a temporary sibling, then swap it in place of `target` in one rename.

    with atomic_directory(out / "best") as tmp: save_teacher(model, layout, tmp)
    """
    target = Path(target)
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _git_commit() -> Optional[str]:
    """The commit of the source checkout this package runs from (an editable install), else None."""
    here = Path(__file__).resolve().parent
    if not (here.parent / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here.parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def provenance(inputs: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """What produced a run: the command line, package and torch versions, git commit, time, input fingerprints.

    Every run's JSON records this under "provenance", so a number can be traced to its command.
    """
    from . import __version__

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = None
    return {
        "command": shlex.join([Path(sys.argv[0]).name] + sys.argv[1:]) if sys.argv and sys.argv[0] else None,
        "sidmlp_kernels": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": dict(inputs or {}),
    }
