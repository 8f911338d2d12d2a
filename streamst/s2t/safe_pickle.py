"""Read a fairseq checkpoint without running its pickled code.

fairseq pickles its configuration as an `argparse.Namespace` (old checkpoints) or an omegaconf `DictConfig`
(newer ones), next to the tensors. `load_checkpoint` unpickles with a restricted `find_class`: tensors,
`Namespace`, `OrderedDict` and plain builtins are real; every other class becomes an inert `Opaque` record of
its name, arguments and state, from which `plain` recovers the values of omegaconf containers. Nothing named
in the file is imported or called.
"""
from __future__ import annotations

import argparse
import collections
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict, ("argparse", "Namespace"): argparse.Namespace,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}


class Opaque:
    """Stands for an object of a class the checkpoint names but we do not import."""

    module = ""
    name = ""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.module}.{self.name}>"


def _opaque(module: str, name: str) -> type:
    return type(name, (Opaque,), {"module": module, "name": name})


def _reconstructor(cls, base, state):
    """copyreg._reconstructor, only for the classes this loader allows."""
    if isinstance(cls, type) and (issubclass(cls, Opaque) or cls is argparse.Namespace):
        return cls.__new__(cls)
    raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")


class SafeUnpickler(pickle.Unpickler):
    """Unpickler whose find_class never imports anything outside ALLOWED."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "copyreg" and name == "_reconstructor":
            return _reconstructor
        if module == "torch" and name.endswith("Storage"):  # legacy storage types: torch maps them itself
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _opaque(module, name)


SAFE_PICKLE = types.SimpleNamespace(Unpickler=SafeUnpickler, __name__="streamst.s2t.safe_pickle",
                                    load=lambda f, **kw: SafeUnpickler(f, **kw).load())


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict (tensors on CPU, config objects inert); ValueError for an unreadable file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=SAFE_PICKLE)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable fairseq checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a fairseq checkpoint (a {type(obj).__name__}, not a dict)")
    return obj


def plain(obj: Any, depth: int = 0) -> Any:
    """Namespaces, omegaconf containers and nodes as plain dicts, lists and values (anything else: None)."""
    if depth > 50:
        return None
    if isinstance(obj, (str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, argparse.Namespace):
        return {k: plain(v, depth + 1) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v, depth + 1) for k, v in obj.items() if isinstance(k, (str, int))}
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    if isinstance(obj, Opaque):
        state = obj.state if isinstance(obj.state, dict) else {}
        inner = state.get("__dict__", state) if isinstance(state.get("__dict__"), dict) else state
        if "_content" in inner:
            return plain(inner["_content"], depth + 1)
        if "_val" in inner:
            return plain(inner["_val"], depth + 1)
        if obj.module.startswith("enum") or (len(obj.args) == 1 and isinstance(obj.args[0], (str, int))):
            return obj.args[0] if obj.args else None
        return None
    return None
