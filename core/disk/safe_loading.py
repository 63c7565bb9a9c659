"""Loading weights from files the user did not necessarily write, without trusting them.

* ``.safetensors``: the header is read and checked *before* any tensor is touched:
  its length, that it is JSON, that every tensor's dtype and shape agree with the
  byte range it claims, and that the byte ranges tile the data section exactly and
  stay inside the file.  Anything else is a :class:`CorruptFileError` whose message
  says "corrupt or not a safetensors file" and why.
* ``.pt`` / ``.bin`` / ``.pth`` (legacy pickles): loaded only through
  ``torch.load(weights_only=True)``, which refuses every object that is not a tensor
  or a plain container, so no code from the file ever runs.  A warning says so.

* JSON files a run or an export wrote (configs, metadata, sidecars, checkpoint states):
  :func:`read_json_object` refuses one that is not UTF-8, not JSON or not an object,
  naming the file and what to do, so no decode error without a file name reaches a user.

Nothing here ever calls an unrestricted unpickler.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import warnings
from pathlib import Path

import torch

SAFETENSORS_SUFFIX = ".safetensors"
LEGACY_SUFFIXES = (".pt", ".pth", ".bin")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit: a larger "header" is garbage, not a header

# Bytes per element of each dtype the safetensors format names.
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


class CorruptFileError(ValueError):
    """A weights file is damaged, truncated, or not the format its name says."""


class UnsafeFileError(ValueError):
    """A legacy pickle holds objects other than tensors; it was refused without running them."""


def _corrupt(path: Path, reason: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: corrupt or not a safetensors file ({reason})")


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, dict]:
    """The validated header of a safetensors file: ``{name: {dtype, shape, data_offsets}}``
    plus ``"__metadata__"`` when present.  Raises :class:`CorruptFileError` on any inconsistency."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"file is {size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            raise _corrupt(path, f"header claims {header_len} bytes but the file has {size - 8} after the length")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    _check_entries(path, header, data_len=size - 8 - header_len)
    return header


def _check_entries(path: Path, header: dict, data_len: int) -> None:
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    ranges: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise _corrupt(path, f"entry {name!r} lacks dtype, shape or data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_BITS:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise _corrupt(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        expected = math.ceil(math.prod(shape) * _DTYPE_BITS[dtype] / 8)
        if not 0 <= begin <= end or end - begin != expected:
            raise _corrupt(
                path, f"tensor {name!r} claims bytes [{begin}, {end}) but shape {shape} of {dtype} needs {expected}"
            )
        ranges.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise _corrupt(path, f"tensor {name!r} starts at byte {begin}, expected {position} (gap or overlap)")
        position = end
    if position != data_len:
        raise _corrupt(path, f"tensors cover {position} bytes but the data section holds {data_len} (truncated?)")


def load_safetensors(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, after :func:`read_safetensors_header` has vouched for it."""
    from safetensors.torch import load_file

    path = Path(path)
    read_safetensors_header(path)
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # the library's own checks, e.g. a dtype this torch lacks
        raise _corrupt(path, str(exc)) from None


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata stored in a safetensors header (empty when there is none)."""
    return dict(read_safetensors_header(path).get("__metadata__", {}))


def load_legacy_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A ``.pt``/``.bin`` state dict, loaded with ``torch.load(weights_only=True)`` (no code runs).

    Raises :class:`UnsafeFileError` when the pickle holds anything but tensors and plain containers.
    """
    path = Path(path)
    warnings.warn(
        f"{path.name} is a legacy pickle-based file; loading it with torch.load(weights_only=True), which "
        "accepts only tensors and plain containers. Prefer safetensors.",
        stacklevel=2,
    )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: refused to load: it contains objects other than tensors, and running them could "
            f"execute code from the file ({str(exc).splitlines()[0]})"
        ) from None
    except Exception as exc:
        raise CorruptFileError(f"{path}: corrupt or not a PyTorch weights file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CorruptFileError(f"{path}: expected a flat mapping of names to tensors, got {type(data).__name__}")
    return data


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from a safetensors file or, with a warning, a legacy pickle."""
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return load_safetensors(path)
    if path.suffix in LEGACY_SUFFIXES:
        return load_legacy_weights(path)
    raise ValueError(f"{path}: unknown weights format (expected {SAFETENSORS_SUFFIX} or {', '.join(LEGACY_SUFFIXES)})")


def read_json_object(path: str | os.PathLike[str], fix: str) -> dict:
    """The JSON object in ``path``; a ValueError "``path`` is damaged (why); ``fix``" otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is damaged (not UTF-8 text, byte {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is damaged (not valid JSON: {exc.msg}, line {exc.lineno}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is damaged (a JSON {type(data).__name__}, not an object); {fix}")
    return data


__all__ = [
    "read_json_object",
    "CorruptFileError",
    "UnsafeFileError",
    "load_legacy_weights",
    "load_safetensors",
    "load_weights",
    "read_safetensors_header",
    "safetensors_metadata",
]
