"""Text data is read lazily: a byte-offset row index, rows parsed on demand, texts tokenised when asked for.

Correctness against the standard library's own reader (``csv.DictReader``) on small files:
quoted newlines stay inside their row, a BOM is skipped, random access equals the stream,
JSONL blank lines are no rows, bytes that are not UTF-8 are named by file and row.
Memory: a generated ~40 MB CSV is built into a dataset in a subprocess, and its peak RSS
may exceed a floor subprocess (the same imports and tokenizer, no data) by at most
``GROWTH_BOUND_MB``.  The bound is one that the code before this (``read_rows``'s
``list[dict]`` + every text tokenised into Python lists up front) fails: run from
``git show 8070f6e:core/data/{errors,table_files,text_classification}.py`` in a temporary
package with the same child script and this test's file (40 MB, 524,288 rows), it grew by
474 MB over the floor (the lazy dataset: 37 MB), with this word tokenizer; a real tokenizer's
per-token Python ints made it worse (the issue: 1.97 GB for 20 MB).
"""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_data_errors import WordTokenizer

from lora_studio.core.data import CausalLMDataset, DataError, TextClassificationDataset, preview_data
from lora_studio.core.data.table_files import RowTable, read_rows
from lora_studio.core.run_config import DataConfig

GROWTH_BOUND_MB = 100  # the stated bound: dataset + index + first batch over the floor, for a ~40 MB file
BIG_FILE_MB = 40


def _write_csv(path: Path, rows: list[list[str]], *, bom: bool = False, newline: str = "\n") -> Path:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        csv.writer(f, lineterminator=newline).writerows(rows)
    return path


def _dict_reader_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def test_quoted_newlines_stay_in_their_row_and_random_access_equals_dict_reader(tmp_path) -> None:
    rows = [["text", "label", "note"], ["one line", "a", "x"], ["two\nlines, with a comma", "b", ""],
            ['a "quoted" word\r\nand a CRLF inside', "a", "y"], ["", "b", "empty text"], ["last", "a"],
            ["extra", "b", "cells", "here"]]
    for newline in ("\n", "\r\n"):
        path = _write_csv(tmp_path / f"quoted{len(newline)}.csv", rows, newline=newline)
        expected = _dict_reader_rows(path)
        table = RowTable(path)
        assert len(table) == len(expected) == 6
        assert list(table.iter_rows()) == expected
        assert [table.row(i) for i in range(len(table))] == expected
        assert [table.row(i) for i in (5, 0, 3, 1, 1, -1)] == [expected[i] for i in (5, 0, 3, 1, 1, -1)]
        assert table.row(1)["text"] == "two\nlines, with a comma"
        assert table.columns == ["text", "label", "note"]
        with pytest.raises(IndexError):
            table.row(6)


def test_a_bom_and_blank_lines_are_not_rows(tmp_path) -> None:
    path = _write_csv(tmp_path / "bom.csv", [["text", "label"], ["héllo", "a"], [], ["wörld", "b"]], bom=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    table = RowTable(path)
    assert table.columns == ["text", "label"]  # not "\ufefftext"
    assert [table.row(i) for i in range(len(table))] == _dict_reader_rows(path) == read_rows(path)
    assert len(table) == 2


def test_jsonl_blank_lines_random_access_and_bad_lines_named(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    objects = [{"text": f"t{i}", "label": i % 2} for i in range(5)]
    path.write_bytes(b"\xef\xbb\xbf" + b"\n\n".join(json.dumps(o).encode() for o in objects) + b"\n   \n")
    table = RowTable(path)
    assert len(table) == 5 and table.columns == ["text", "label"]
    assert [table.row(i) for i in (4, 0, 2)] == [objects[4], objects[0], objects[2]]
    assert list(table.iter_rows()) == objects
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: expected a JSON object, got list"):
        list(RowTable(bad).iter_rows())


def test_bytes_that_are_not_utf8_are_named_by_file_and_row(tmp_path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nfine,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv, row 2: not UTF-8 text \(byte 0xe9.*save the file as UTF-8"):
        TextClassificationDataset(path, WordTokenizer(), ["a", "b"])
    with pytest.raises(DataError, match=r"latin1\.csv, row 2: not UTF-8"):
        preview_data(DataConfig(kind="text-classification", train=str(path)))
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl, line 2: not UTF-8"):
        list(RowTable(jsonl).iter_rows())
    text = tmp_path / "book.txt"
    text.write_bytes(b"one two\n\ncaf\xe9 three\n")
    with pytest.raises(DataError, match=r"book\.txt, line 3: not UTF-8"):
        CausalLMDataset(text, WordTokenizer())


def test_the_dataset_reads_texts_lazily_and_pickles(tmp_path) -> None:
    rows = [["text", "label"]] + [[f"word{i} multi\nline", "ab"[i % 2]] for i in range(50)]
    path = _write_csv(tmp_path / "d.csv", rows)
    data = TextClassificationDataset(path, WordTokenizer(), ["a", "b"])
    assert len(data) == 50 and data.texts[7] == "word7 multi\nline"
    assert data[7] == {"input_ids": WordTokenizer()("word7 multi\nline")["input_ids"], "labels": 1}
    clone = pickle.loads(pickle.dumps(data))  # a DataLoader worker gets a copy that opens its own file
    assert [clone[i] for i in (0, 49, 3)] == [data[i] for i in (0, 49, 3)]


def _generate_csv(path: Path, megabytes: int) -> int:
    """A CSV of about ``megabytes`` MB: short review-like sentences, three labels, some quoted commas."""
    words = "the a movie film was great terrible boring lovely plot actor scene ending, long short".split()
    line_parts = []
    for i in range(4096):
        sentence = " ".join(words[(i * 7 + k * 3) % len(words)] for k in range(8 + i % 9))
        line_parts.append(f'"{sentence} {i}",{("pos", "neg", "mixed")[i % 3]}\n')
    block = "".join(line_parts).encode()
    rows = 0
    with path.open("wb") as f:
        f.write(b"text,label\n")
        while f.tell() < megabytes * 2**20:
            f.write(block)
            rows += len(line_parts)
    return rows


CHILD = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, {tests!r})
    import torch
    from torch.utils.data import DataLoader
    from test_data_errors import WordTokenizer
    from lora_studio.core.data import TextClassificationDataset, make_collate
    tokenizer = WordTokenizer()
    tokenizer(["warm up the tokenizer"], truncation=True, max_length=16)
    if sys.argv[1] != "floor":
        data = TextClassificationDataset(sys.argv[1], tokenizer, ["mixed", "neg", "pos"], max_length=64)
        loader = DataLoader(data, batch_size=32, shuffle=True, collate_fn=make_collate(0))
        batch = next(iter(loader))
        assert batch["input_ids"].shape[0] == 32, batch["input_ids"].shape
        print("rows", len(data))
    print("peak_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _peak_mb(arg: str) -> tuple[float, str]:
    script = CHILD.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", script, arg], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = next(line for line in done.stdout.splitlines() if line.startswith("peak_kb"))
    return int(peak.split()[1]) / 1024, done.stdout


def test_building_a_dataset_from_a_large_csv_stays_within_a_memory_bound(tmp_path) -> None:
    path = tmp_path / "large.csv"
    rows = _generate_csv(path, BIG_FILE_MB)
    floor, _ = _peak_mb("floor")
    peak, out = _peak_mb(str(path))
    assert f"rows {rows}" in out
    growth = peak - floor
    assert growth < GROWTH_BOUND_MB, f"{path.stat().st_size / 2**20:.0f} MB CSV, {rows} rows: +{growth:.0f} MB RSS"



def test_causal_lm_reads_paragraphs_and_rows_lazily(tmp_path) -> None:
    book = tmp_path / "book.txt"
    book.write_bytes(b"one two three\r\n\r\nfour five\r\nsix\r\n  \r\n\r\nseven\r\n")
    data = CausalLMDataset(book, WordTokenizer(), max_length=16)
    words = [["one", "two", "three"], ["four", "five", "six"], ["seven"]]
    assert [len(data[i]["input_ids"]) for i in range(len(data))] == [len(w) + 1 for w in words]  # + end of text
    assert data[1]["input_ids"][:-1] == WordTokenizer()("four five six")["input_ids"]
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n".join(json.dumps({"q": "a long long question", "a": f"answer {i}"}) for i in range(6)))
    lazy = CausalLMDataset(chat, WordTokenizer(), prompt_column="q", response_column="a", max_length=8)
    assert lazy[5]["labels"][:4] == [-100] * 4 and lazy[5]["labels"][4:] == lazy[5]["input_ids"][4:]
    with pytest.raises(DataError, match="no example has a token to learn"):
        CausalLMDataset(chat, WordTokenizer(), prompt_column="q", response_column="a", max_length=4)
    packed = CausalLMDataset(chat, WordTokenizer(), prompt_column="q", response_column="a", max_length=7,
                             packing=True)
    assert len(packed) == 6 and all(len(packed[i]["input_ids"]) == 7 for i in range(len(packed)))


def test_broken_csv_quoting_and_old_mac_line_ends_are_named(tmp_path) -> None:
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('text,label\nfine,a\n"never closed,b\n' + "more text,a\n" * 20000)
    with pytest.raises(DataError, match=r"unclosed\.csv, row 2: not valid CSV \(a cell longer than .* never closed"):
        len(RowTable(unclosed))
    mac = tmp_path / "mac.csv"
    mac.write_bytes(b"text,label\rfine,a\rgood,b\r")
    with pytest.raises(DataError, match=r"mac\.csv, the header line: not valid CSV \(.*bare carriage return"):
        len(RowTable(mac))


def test_a_file_changed_after_indexing_is_named_not_misread(tmp_path) -> None:
    path = _write_csv(tmp_path / "d.csv", [["text", "label"], ["one", "a"], ["two", "b"]])
    table = RowTable(path)
    assert table.row(1) == {"text": "two", "label": "b"}
    path.write_text("text,label\nsomething much longer than before,a\ntwo,b\n")
    with pytest.raises(DataError, match=r"d\.csv changed after it was read; start the run again"):
        table.row(1)
