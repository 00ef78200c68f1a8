"""The one reader of checkpoint files: weights come out, no code in a file ever runs.

:func:`read_checkpoint` recognises a file by its first bytes, not by its name:

- a PyTorch zip archive (``torch.save`` since 1.6: ``.pth``, ``.pt``, ``.pyth``, ``.bin``) or a
  legacy PyTorch file: ``torch.load(weights_only=True)``, which builds tensors and plain
  containers only (numpy arrays are allowed as well);
- a pickle (detectron2 model-zoo ``.pkl``): an unpickler that accepts only dicts, lists, tuples,
  sets, numbers, strings, bytes and numpy arrays;
- ``.safetensors``: the header is checked against the file size before anything is allocated.

Anything else (a pickle that names a function or class outside the allow-list, a JSON file, a
truncated archive, a header that declares more bytes than the file has) raises
:class:`CheckpointReadError` naming the file and what was found.
"""
from __future__ import annotations

import codecs
import collections
import importlib
import io
import json
import os
import pickle
import re
import struct
from typing import Any

import numpy as np
import torch

# The first object of a legacy (pre-zip) ``torch.save`` file, and its bytes in pickle protocol 2
# (torch's default), which let such a file go to torch.load without unpickling it twice.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_HEAD = pickle.dumps(_TORCH_LEGACY_MAGIC, protocol=2)
_SAFETENSORS_MAX_HEADER = 100 * 2**20
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's pickling entry points under the module names numpy 1.x and 2.x write."""
    multiarray = importlib.import_module("numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2
                                         else "numpy.core.multiarray")
    found = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found[(module, "_reconstruct")] = multiarray._reconstruct
        found[(module, "scalar")] = multiarray.scalar
    return found


# (module, name) -> object: every global a pickled weights file may name.
SAFE_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in pickle protocol 2
    ("_codecs", "encode"): codecs.encode,
    **_numpy_globals(),
}


class CheckpointReadError(ValueError):
    """A checkpoint file is missing, unreadable, or holds more than weights."""


class _WeightsUnpickler(pickle.Unpickler):
    """Builds only the objects of :data:`SAFE_PICKLE_GLOBALS` (and pickle's own containers)."""

    def find_class(self, module: str, name: str) -> Any:
        found = SAFE_PICKLE_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"persistent id {str(pid)[:80]}")


def _refused(path: str, what: str) -> CheckpointReadError:
    return CheckpointReadError(
        f"checkpoint {path} is refused: it holds Python objects besides weights ({what}); "
        "only tensors, numpy arrays, numbers, strings and containers are read, no code runs. "
        "Convert it where it was made: torch.save(model.state_dict(), ...)"
    )


# torch's weights-only unpickler also checks the class of each object it sets the state of
_TORCH_NUMPY_GLOBALS = list(_numpy_globals().values()) + [
    type(np.dtype(code)) for code in ("?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e",
                                      "f", "d", "F", "D")
]


def _refused_torch_object(message: str) -> str:
    """What torch's weights-only unpickler refused, from its error message."""
    patterns = (
        (r"GLOBAL ([\w.]+)", "global {}"),
        (r"got <class '([\w.]+)'>", "an object of {}"),
        (r"WeightsUnpickler error: ([^\n]+)", "{}"),
    )
    for pattern, template in patterns:
        match = re.search(pattern, message)
        if match:
            return template.format(match.group(1))
    return message.strip().splitlines()[-1]


def _torch_load(path: str) -> Any:
    try:
        with torch.serialization.safe_globals(_TORCH_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused(path, _refused_torch_object(str(e))) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for damaged files
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointReadError(
            f"checkpoint {path} cannot be read: damaged or truncated PyTorch file "
            f"({type(e).__name__}: {first_line})"
        ) from e


def _read_pickle(path: str, data: bytes) -> Any:
    # reading from memory keeps a lying length field from allocating more than the file size
    stream = io.BytesIO(data)
    has_pickle_header = data.startswith(b"\x80")  # protocols 0 and 1 have none
    try:
        first = _WeightsUnpickler(stream, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith(("global ", "persistent id ")):
            raise _refused(path, str(e)) from e
        problem = f"broken pickle ({e})"
    except Exception as e:
        problem = f"broken or truncated pickle ({type(e).__name__}: {e})"
    else:
        if isinstance(first, int) and first == _TORCH_LEGACY_MAGIC:
            return _torch_load(path)
        return first
    if not has_pickle_header:
        problem = f"not a PyTorch, pickle or safetensors file (it starts with {data[:8]!r})"
    raise CheckpointReadError(f"checkpoint {path} cannot be read: {problem}")


def _check_safetensors_header(path: str, data_size: int, header: dict) -> None:
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            numel = int(np.prod(shape, dtype=object)) if shape else 1
            itemsize = _SAFETENSORS_ITEMSIZE[dtype]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read: safetensors entry {name!r} is malformed ({e!r})"
            ) from e
        if not 0 <= begin <= end <= data_size or end - begin != numel * itemsize:
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read: safetensors tensor {name!r} ({dtype} "
                f"{list(shape)}) declares bytes {begin}..{end} but the file holds {data_size} "
                "bytes of data"
            )


def _read_safetensors(path: str, file_size: int, header_size: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(header_size))
        except ValueError as e:
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read: safetensors header is not JSON ({e})"
            ) from e
    if not isinstance(header, dict):
        raise CheckpointReadError(f"checkpoint {path} cannot be read: safetensors header is no dict")
    _check_safetensors_header(path, file_size - 8 - header_size, header)
    try:
        return load_file(path, device="cpu")
    except SafetensorError as e:
        raise CheckpointReadError(f"checkpoint {path} cannot be read: {e}") from e


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint file safely; the format is recognised from its content.

    Args:
        path: a PyTorch file (zip or legacy), a pickle of weights, or a ``.safetensors`` file.

    Returns:
        What the file holds: typically a dict of tensors / numpy arrays (a state dict) or a dict
        wrapping one (``{"model": ...}``, ``{"model_state": ...}``, ``{"state_dict": ...}``).

    Raises:
        CheckpointReadError: the file does not exist, is empty, truncated, of another format,
            declares more bytes than it holds, or names any Python global besides numpy arrays
            and ``OrderedDict`` (nothing of such a file is executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointReadError(f"checkpoint file not found: {path}")
    file_size = os.path.getsize(path)
    if file_size == 0:
        raise CheckpointReadError(f"checkpoint {path} cannot be read: the file is empty")
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_HEAD))
    if head.startswith(b"PK\x03\x04") or head == _TORCH_LEGACY_HEAD:
        return _torch_load(path)
    if len(head) > 8 and head[8:9] == b"{":
        header_size = struct.unpack("<Q", head[:8])[0]
        if header_size > min(file_size - 8, _SAFETENSORS_MAX_HEADER):
            raise CheckpointReadError(
                f"checkpoint {path} cannot be read: safetensors header declares {header_size} "
                f"bytes, the file has {file_size}"
            )
        return _read_safetensors(path, file_size, header_size)
    with open(path, "rb") as f:
        return _read_pickle(path, f.read())
