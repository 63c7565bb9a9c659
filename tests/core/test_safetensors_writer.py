"""write_safetensors writes what safetensors writes, byte for byte, and never a torn file.

The reference is safetensors' own serialiser (``safetensors.torch.save``): same header, same order,
same padding, same data.  Also: the checksum it returns is the file's; shared memory and dtypes the
format lacks are refused by key; a failure half-way leaves the previous file whole; ``save_pretrained``
routed through it writes the same weight file as transformers alone.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import torch
from safetensors.torch import load_file, save

import lora_studio.core.disk.safetensors_writer as writer
from lora_studio.core.disk.safetensors_writer import write_safetensors


def _every_dtype() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tensors = {
        "f32": torch.randn(5, 7), "f64": torch.randn(3, dtype=torch.float64), "f16": torch.randn(4, 2).half(),
        "bf16": torch.randn(9).bfloat16(), "i64": torch.arange(6), "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16), "i8": torch.arange(-3, 4, dtype=torch.int8),
        "u8": torch.arange(7, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "c64": torch.randn(2, dtype=torch.complex64),
        "f8": torch.randn(4).to(torch.float8_e4m3fn), "f8b": torch.randn(4).to(torch.float8_e5m2),
        "ünïcode name": torch.randn(2), "a.b.weight": torch.randn(2, 2),
    }  # fmt: skip
    for name in ("uint16", "uint32", "uint64"):
        tensors[name] = torch.arange(4).to(getattr(torch, name))
    return tensors


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_bytes_equal_safetensors_own(tmp_path, metadata) -> None:
    tensors = _every_dtype()
    path = tmp_path / "t.safetensors"
    digest = write_safetensors(tensors, path, metadata, checksum=True)
    expected = save(tensors, metadata=metadata)
    assert path.read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


def _header_and_data(blob: bytes) -> tuple[dict, bytes]:
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def test_several_metadata_entries(tmp_path) -> None:
    """safetensors keeps metadata in a hash map, so with several entries its order varies from run to
    run: the header must say the same things and the data must be the same bytes."""
    tensors, metadata = _every_dtype(), {"format": "pt", "note": "é", "z": "1"}
    path = tmp_path / "t.safetensors"
    write_safetensors(tensors, path, metadata)
    assert _header_and_data(path.read_bytes()) == _header_and_data(save(tensors, metadata=metadata))


def test_non_contiguous_and_sliced_writes(tmp_path, monkeypatch) -> None:
    """Tensors larger than one write slice go out in slices (with writeback asked for between them)."""
    monkeypatch.setattr(writer, "_WRITE_SLICE", 64)
    monkeypatch.setattr(writer, "_WRITEBACK_STRETCH", 100)
    asked = []
    real = writer._start_writeback
    monkeypatch.setattr(writer, "_start_writeback", lambda fd, offset, length: (asked.append((offset, length)),
                                                                                real(fd, offset, length)))
    tensors = {"t": torch.randn(40, 30).t(), "big": torch.randn(1000), "half": torch.randn(33).bfloat16()}
    path = tmp_path / "t.safetensors"
    assert write_safetensors(tensors, path) is None  # no checksum unless asked
    assert path.read_bytes() == save({k: v.contiguous() for k, v in tensors.items()})
    assert asked and all(b[0] == a[0] + a[1] for a, b in zip(asked, asked[1:]))  # contiguous stretches
    loaded = load_file(str(path))
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor)


def test_shared_memory_is_refused_by_name(tmp_path) -> None:
    weight = torch.randn(4, 4)
    with pytest.raises(ValueError, match="'a' and 'row' share memory.*clone"):
        write_safetensors({"a": weight, "row": weight[1]}, tmp_path / "t.safetensors")
    disjoint = {"top": weight[:2], "bottom": weight[2:]}  # views of one storage that do not overlap
    write_safetensors(disjoint, tmp_path / "t.safetensors")
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["bottom"], weight[2:])


def test_dtype_the_format_lacks_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="'z' has dtype torch.complex128"):
        write_safetensors({"z": torch.zeros(2, dtype=torch.complex128)}, tmp_path / "t.safetensors")
    with pytest.raises(TypeError, match="'x' is a list"):
        write_safetensors({"x": [1, 2]}, tmp_path / "t.safetensors")
    assert not list(tmp_path.iterdir())


def test_failure_half_way_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "t.safetensors"
    write_safetensors({"a": torch.ones(1000), "b": torch.ones(1000)}, path)
    before = path.read_bytes()
    real_write_all = writer._write_all
    calls = []

    def fail_on_second(handle, chunk):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write_all(handle, chunk)

    monkeypatch.setattr(writer, "_write_all", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        write_safetensors({"a": torch.zeros(1000), "b": torch.zeros(1000)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temporary file left behind


def test_save_pretrained_through_the_writer_writes_the_same_file(tmp_path, monkeypatch) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from lora_studio.core.disk.merged_export import _transformers_writes_with

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16))
    model.save_pretrained(tmp_path / "plain")
    used = []
    with _transformers_writes_with(lambda t, f, m=None: (used.append(f), write_safetensors(t, f, m))[1]):
        model.save_pretrained(tmp_path / "ours")
    assert used, "save_pretrained did not write through the writer"
    plain, ours = tmp_path / "plain" / "model.safetensors", tmp_path / "ours" / "model.safetensors"
    assert ours.read_bytes() == plain.read_bytes()  # tied lm_head left out the same way, same header
    from safetensors.torch import save_file
    from transformers import modeling_utils

    assert modeling_utils.safe_save_file is save_file  # put back afterwards


def test_pending_tensors_are_made_ahead_within_the_memory_bound(tmp_path, monkeypatch) -> None:
    """Pending tensors are made on a worker ahead of the writer, but never more than ``_AHEAD_BYTES``
    of them wait at once; the file is the one their values make."""
    from lora_studio.core.disk.safetensors_writer import PendingTensor

    monkeypatch.setattr(writer, "_AHEAD_BYTES", 2 * 400)  # two 100-float tensors
    values = {f"p{i:02d}": torch.randn(100) for i in range(12)}
    waiting, most = [0], [0]

    def pending(value: torch.Tensor) -> PendingTensor:
        def make() -> torch.Tensor:
            waiting[0] += 1
            most[0] = max(most[0], waiting[0])
            return value.clone()

        return PendingTensor(tuple(value.shape), value.dtype, make)

    real_slices = writer._byte_slices

    def consumed(tensor):
        waiting[0] -= 1  # only made tensors reach here in this test
        yield from real_slices(tensor)

    real_write_all = writer._write_all

    def slow_write(handle, chunk):  # a slow disk: the worker has time to get ahead
        time.sleep(0.005)
        return real_write_all(handle, chunk)

    monkeypatch.setattr(writer, "_byte_slices", consumed)
    monkeypatch.setattr(writer, "_write_all", slow_write)
    path = tmp_path / "t.safetensors"
    write_safetensors({k: pending(v) for k, v in values.items()}, path)
    assert path.read_bytes() == save(values)
    assert 2 <= most[0] <= 3  # made ahead (more than one at a time), and bounded: two waiting, one being written
