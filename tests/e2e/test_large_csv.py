"""The CLI on text data (issue 15): a generated multi-megabyte CSV with quoted newlines trains through
`lora-studio train`; a single-class file and a validation class the training file lacks exit 2 naming
the class and the files, before any step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
RUN_TOML = """
[model]
source = "demo"
name = "text"

[data]
kind = "text-classification"
train = "{train}"
{validation}
max_length = 32

[lora]
r = 4
alpha = 8
targets = ["query", "value"]

[training]
max_steps = 1
batch_size = 8
lr = 0.001
eval_every = 0
eval_at_start = false
checkpoint_every = 0
device = "cpu"

[output]
dir = "{out}"
tensorboard = false
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lora-studio"), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _config(tmp_path: Path, train: Path, validation: Path | None = None) -> Path:
    line = f'validation = "{validation}"' if validation else "validation_split = 0.0"
    path = tmp_path / "run.toml"
    path.write_text(RUN_TOML.format(train=train, validation=line, out=tmp_path / "run"))
    return path


def test_a_multi_megabyte_csv_with_quoted_newlines_trains(tmp_path) -> None:
    train = tmp_path / "reviews.csv"
    block = "".join(f'"a lovely film, take {i}\nsecond line",pos\n"a boring film {i}",neg\n' for i in range(2048))
    with train.open("w") as f:
        f.write("text,label\n")
        for _ in range(60):  # about 6 MB, 245,760 rows
            f.write(block)
    done = _cli("train", str(_config(tmp_path, train)), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished: 1/1 steps" in done.stdout


def test_a_single_class_exits_2_naming_it(tmp_path) -> None:
    train = tmp_path / "one.csv"
    train.write_text("text,label\ngood,a\nfine,a\nnice,a\n")
    done = _cli("train", str(_config(tmp_path, train)), "--quiet")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "one.csv (column 'label') has only one class 'a'; a classifier needs two or more" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_validation_class_missing_from_training_exits_2_naming_both_files(tmp_path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,a\nbad,b\n")
    val = tmp_path / "val.csv"
    val.write_text("text,label\nok,a\nmeh,c\n")
    done = _cli("train", str(_config(tmp_path, train, val)), "--quiet")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"class 'c' is in the validation data {val} but not in the training data {train}" in done.stderr
    assert "Traceback" not in done.stderr
