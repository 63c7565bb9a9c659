"""Writing safetensors files straight from tensor memory, atomically and durably, at the disk's pace.

``safetensors.torch.save_file`` first copies every tensor into one model-sized ``bytes`` object and
then writes that: two passes over the data and a model-sized allocation, and the file reaches the
disk only when the kernel gets round to it.  :func:`write_safetensors` writes the same file, byte for
byte (same header: same tensor order, same JSON, same padding; ``tests/core/test_safetensors_writer.py``
compares the bytes), with

* **one pass**: each tensor's own memory goes to ``write`` through the buffer protocol, no copy;
* **no torn file**: it goes through :func:`~.atomic_files.atomic_path` (temporary file, fsync, rename),
  so the previous file stays whole until the new one is complete and on disk;
* **writeback while writing**: on Linux the kernel is asked (``sync_file_range``) to start writing each
  finished stretch to disk while the next is copied, so the closing fsync waits for the last stretch
  only, instead of the whole file after the fact.  A durable write then costs about what the disk
  needs; ``bench/bench_merge_export.py`` measures it against ``save_file`` with and without an fsync.

Layout (the format): an 8-byte little-endian header length, the JSON header padded with spaces to a
multiple of 8, then each tensor's bytes at its ``data_offsets``.  Tensors are ordered as safetensors
orders them (widest dtype first, then by name), which keeps every tensor aligned to its element size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .atomic_files import atomic_path

# safetensors' names, in the order its serialiser sorts them (descending): its Dtype enum order.
_DTYPE_ORDER: tuple[tuple[torch.dtype, str], ...] = tuple(
    (dtype, name)
    for dtype, name in (
        (getattr(torch, "uint64", None), "U64"), (torch.int64, "I64"), (torch.float64, "F64"),
        (torch.complex64, "C64"), (torch.float32, "F32"), (getattr(torch, "uint32", None), "U32"),
        (torch.int32, "I32"), (torch.bfloat16, "BF16"), (torch.float16, "F16"),
        (getattr(torch, "uint16", None), "U16"), (torch.int16, "I16"),
        (getattr(torch, "float8_e4m3fn", None), "F8_E4M3"), (getattr(torch, "float8_e5m2", None), "F8_E5M2"),
        (torch.int8, "I8"), (torch.uint8, "U8"), (torch.bool, "BOOL"),
    )
    if dtype is not None
)  # fmt: skip
_DTYPE_NAMES = dict(_DTYPE_ORDER)
_DTYPE_RANK = {dtype: rank for rank, (dtype, _) in enumerate(_DTYPE_ORDER)}


@dataclass(frozen=True)
class PendingTensor:
    """A tensor computed only when the writer reaches it (e.g. a merged weight), then dropped: the
    file can hold more than memory would at once.  ``make()`` must return exactly ``shape``/``dtype``."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]


_WRITE_SLICE = 64 << 20  # bytes per write call: writeback of a large tensor starts before it is all copied
_WRITEBACK_STRETCH = 16 << 20  # ask for writeback whenever this much has been written since the last ask
_AHEAD_BYTES = 64 << 20  # made tensors waiting to be written, at most (one at least)


def write_safetensors(
    tensors: Mapping[str, torch.Tensor | PendingTensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    *,
    checksum: bool = False,
) -> str | None:
    """Write ``tensors`` to ``path`` as safetensors, atomically and durably; with ``checksum`` return the
    file's SHA-256 (hashed from memory while writing, not read back).

    A drop-in for ``safetensors.torch.save_file(tensors, path, metadata)``: the same bytes, the same
    refusals (shared memory between two tensors, a dtype the format lacks), with messages naming the key.
    A :class:`PendingTensor` is made when its turn comes; if making it raises, nothing is written.
    """
    order, header = _layout(tensors, metadata)
    digest = hashlib.sha256(header) if checksum else None
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as handle, _MadeAhead(tensors, order) as made:
        position = handle.write(header)
        kicked = 0
        for name in order:
            for chunk in _byte_slices(made[name]):
                position += _write_all(handle, chunk)
                if digest is not None:
                    digest.update(chunk)
                if position - kicked >= _WRITEBACK_STRETCH:
                    _start_writeback(handle.fileno(), kicked, position - kicked)
                    kicked = position
    return digest.hexdigest() if digest is not None else None


class _MadeAhead:
    """Tensors in write order, each :class:`PendingTensor` made ahead on a worker thread, so computing
    (torch releases the GIL) overlaps writing (so does ``write``).  Up to ``_AHEAD_BYTES`` of made
    tensors wait at a time (at least one): enough that the worker keeps busy while a large tensor that
    needs no making -- an embedding -- is written, and memory stays bounded whatever the model's size."""

    def __init__(self, tensors: Mapping[str, torch.Tensor | PendingTensor], order: list[str]) -> None:
        self._tensors = tensors
        self._pending = [n for n in order if isinstance(tensors[n], PendingTensor)]
        self._next = 0
        self._futures: dict[str, Future] = {}
        self._ahead_bytes = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="safetensors-make")

    def __enter__(self) -> _MadeAhead:
        self._fill()
        return self

    def __exit__(self, *exc) -> None:
        for future in self._futures.values():
            future.cancel()
        self._pool.shutdown(wait=True)  # a make already running finishes before the file is dropped

    def __getitem__(self, name: str) -> torch.Tensor:
        future = self._futures.pop(name, None)
        if future is None:
            return self._tensors[name]
        self._ahead_bytes -= _nbytes(self._tensors[name])
        self._fill()
        return future.result()  # a failure in make() surfaces here, before anything of it is written

    def _fill(self) -> None:
        while self._next < len(self._pending) and (not self._futures or self._ahead_bytes < _AHEAD_BYTES):
            name = self._pending[self._next]
            self._next += 1
            self._futures[name] = self._pool.submit(_made, name, self._tensors[name])
            self._ahead_bytes += _nbytes(self._tensors[name])


def _nbytes(tensor: torch.Tensor | PendingTensor) -> int:
    return math.prod(tensor.shape) * tensor.dtype.itemsize


def _made(name: str, tensor: torch.Tensor | PendingTensor) -> torch.Tensor:
    if not isinstance(tensor, PendingTensor):
        return tensor
    made = tensor.make()
    if tuple(made.shape) != tuple(tensor.shape) or made.dtype != tensor.dtype:
        raise ValueError(f"tensor {name!r} was announced as {tensor.dtype} {list(tensor.shape)} but made as "
                         f"{made.dtype} {list(made.shape)}; nothing was written")  # fmt: skip
    return made


def _layout(
    tensors: Mapping[str, torch.Tensor | PendingTensor], metadata: Mapping[str, str] | None
) -> tuple[list[str], bytes]:
    """The write order and the padded header (length prefix included), exactly as safetensors makes them."""
    _refuse_shared_memory(tensors)
    for name, tensor in tensors.items():
        if not isinstance(tensor, (torch.Tensor, PendingTensor)):
            raise TypeError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which the safetensors format cannot hold")
        if isinstance(tensor, torch.Tensor) and tensor.layout != torch.strided:
            raise ValueError(f"tensor {name!r} is {tensor.layout}; convert it to a dense tensor first")
    order = sorted(tensors, key=lambda name: (_DTYPE_RANK[tensors[name].dtype], name))
    entries: dict[str, object] = {}
    if metadata is not None:
        entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = _nbytes(tensor)
        entries[name] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                         "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # data starts 8-aligned, as in safetensors
    return order, len(text).to_bytes(8, "little") + text


def _refuse_shared_memory(tensors: Mapping[str, torch.Tensor | PendingTensor]) -> None:
    """Two keys over overlapping memory (tied weights, views) would be written twice and read back as
    two tensors: safetensors refuses it, and so does this writer, naming both keys."""
    spans = sorted(
        (t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size(), t.numel() * t.element_size(), name)
        for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.numel()
    )  # fmt: skip
    for (start, size, name), (next_start, _, next_name) in zip(spans, spans[1:]):
        if next_start < start + size:
            raise ValueError(
                f"tensors {name!r} and {next_name!r} share memory; save one of them, or give the other its own "
                "copy (tensor.clone()) first"
            )


def _byte_slices(tensor: torch.Tensor):
    """The tensor's bytes as memory views of at most ``_WRITE_SLICE`` bytes, without copying a
    contiguous CPU tensor (others are made contiguous on the CPU first, one tensor at a time)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.contiguous()
    if tensor.numel() == 0:
        return
    # numpy has no bfloat16 or float8: go through a uint8 view of the same memory.
    data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise RuntimeError("safetensors files are little-endian; this machine is not")
    for start in range(0, len(data), _WRITE_SLICE):
        yield data[start : start + _WRITE_SLICE]


def _write_all(handle, chunk: memoryview) -> int:
    """Write all of ``chunk`` (an unbuffered write may write less than asked)."""
    written = 0
    while written < len(chunk):
        written += handle.write(chunk[written:])
    return written


def _sync_file_range():
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages in the range; do not wait


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` to disk now, without waiting.
    Only a hint: where it is unavailable or fails, the closing fsync does all the work."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


__all__ = ["PendingTensor", "write_safetensors"]
