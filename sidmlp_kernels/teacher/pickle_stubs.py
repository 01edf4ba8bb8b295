"""Reading pickles of code bases that are not installed (cornac's Recommender.save, Lightning checkpoints).

`stub_load` unpickles with torch, numpy, transformers and builtin containers as themselves and
every other class (cornac's, Lightning's, functools.partial of an optimizer, ...) as an inert
stand-in: a torch Module subclass that only stores the pickled attributes, so a pickled module
keeps its `_parameters` / `_buffers` / `_modules` and `state_dict()` works, and nothing of the
foreign code base runs. Tensors load onto the CPU. Like torch.load(weights_only=False), meant for
files you trust: it is a narrowing, not a sandbox.
"""

from __future__ import annotations

import io
import pickle
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["stub_load"]

_REAL = ("torch", "numpy", "transformers", "collections", "copyreg", "_codecs", "safetensors")
_BUILTINS = {"set", "frozenset", "dict", "list", "tuple", "slice", "range", "bytearray", "bytes", "complex",
             "object", "int", "float", "str", "bool"}
_STUBS: dict[tuple[str, str], type] = {}


class _Stub(nn.Module):
    """Stand-in for a class of an absent code base: takes any arguments, keeps any state."""

    _stub_of = "?"

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.__dict__["_stub_args"] = (args, kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            state = {"_stub_state": state}
        for name in ("_parameters", "_buffers", "_modules"):
            state.setdefault(name, {})
        nn.Module.__setstate__(self, state)

    def __repr__(self) -> str:
        return f"<stand-in for {self._stub_of}>"


def _stub(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(name, (_Stub,), {"_stub_of": f"{module}.{name}", "__module__": __name__})
    return _STUBS[key]


def _load_storage_bytes(data: bytes) -> Any:
    """torch.storage._load_from_bytes, onto the CPU (a pickled CUDA module loads on a CPU-only machine)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "torch.storage" and name == "_load_from_bytes":
            return _load_storage_bytes
        if module == "builtins":
            return super().find_class(module, name) if name in _BUILTINS else _stub(module, name)
        if module.split(".")[0] in _REAL:
            return super().find_class(module, name)
        return _stub(module, name)


_PICKLE_MODULE = types.SimpleNamespace(Unpickler=_Unpickler, load=lambda f, **kw: _Unpickler(f, **kw).load(),
                                       __name__="sidmlp_stub_pickle")


def stub_load(path: str | Path, torch_file: bool) -> Any:
    """Unpickle `path` (torch_file: a torch.save file) with foreign classes as stand-ins (module docstring)."""
    if torch_file:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE_MODULE)
    with open(path, "rb") as f:
        return _Unpickler(f).load()
