"""The CLI never shows a raw traceback (issue 15): a user's mistake is one ``error:`` line and exit
code 2, anything unexpected one line naming the report file that holds its traceback and exit code
1 (``LORA_STUDIO_DEBUG=1`` raises it instead), a Ctrl-C 130; bad flags and an ``output.dir`` that
is a file are refused naming them and the fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lora_studio.core.cli import main
from lora_studio.core.run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig

BIN = Path(sys.executable).parent
REPORT = re.compile(r"the full report is in (\S+\.log); please file it")


def _digits_config(out: Path, path: Path) -> Path:
    RunConfig(
        model=ModelConfig(source="demo", name="digits"),
        data=DataConfig(kind="digits", shift="rotate", max_samples=64),
        training=TrainingConfig(max_steps=2, batch_size=16, eval_every=0, checkpoint_every=0, device="cpu"),
        output=OutputConfig(dir=str(out), tensorboard=False),
    ).save(path)
    return path


def _report(err: str) -> Path:
    found = REPORT.search(err)
    assert found, err
    return Path(found.group(1))


@pytest.fixture
def private_temp(tmp_path, monkeypatch) -> Path:
    """Reports written "to the temporary folder" land in this test's own folder."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _fail_inside_describe(monkeypatch, error: BaseException) -> None:
    import importlib

    # the module (its package re-exports the function under the same name)
    describe_module = importlib.import_module("lora_studio.core.adapter.describe")

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(describe_module, "describe", broken)


def test_an_unexpected_error_is_one_line_naming_its_report_file(capsys, monkeypatch, private_temp) -> None:
    _fail_inside_describe(monkeypatch, KeyError("config"))
    assert main(["inspect", "demo:digits"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("lora-studio inspect: error: unexpected KeyError: 'config'; "), err
    report = _report(err)
    assert report.parent == private_temp  # no run folder to put it in: the temporary folder
    text = report.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and "KeyError: 'config'" in text
    assert "command: lora-studio inspect demo:digits" in text


def test_debug_mode_raises_the_unexpected_error(monkeypatch, private_temp) -> None:
    _fail_inside_describe(monkeypatch, KeyError("config"))
    monkeypatch.setenv("LORA_STUDIO_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["inspect", "demo:digits"])
    assert not list(private_temp.iterdir())  # nothing written: the developer sees the traceback itself


def test_ctrl_c_in_a_command_without_its_own_handler_exits_130(capsys, monkeypatch) -> None:
    _fail_inside_describe(monkeypatch, KeyboardInterrupt())
    assert main(["inspect", "demo:digits"]) == 130
    err = capsys.readouterr().err
    assert "cancelled (Ctrl-C)" in err and "Traceback" not in err


def test_an_unexpected_error_inside_a_run_goes_to_a_report_in_the_run_folder(capsys, monkeypatch, tmp_path,
                                                                            private_temp) -> None:
    import lora_studio.core.training.trainer as trainer_module

    def broken(*args, **kwargs):  # the learning-rate schedule, asked at each step: fails mid-run
        raise KeyError("optimizer")

    monkeypatch.setattr(trainer_module, "lr_factor", broken)
    out = tmp_path / "run"
    assert main(["train", str(_digits_config(out, tmp_path / "RUN.toml")), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyError" in err, err
    report = _report(err)
    assert report.parent == out, "the report goes into the run folder it belongs to"
    assert "Traceback (most recent call last)" in report.read_text(encoding="utf-8")


def test_an_output_dir_that_is_a_file_is_named_with_the_fix(capsys, tmp_path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    config = _digits_config(taken, tmp_path / "RUN.toml")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"output.dir in {config}: the run folder {taken} is a file" in err, err
    assert "choose another folder" in err and "Errno" not in err, err
    assert main(["train", str(config), "--output", str(taken / "run")]) == 2
    err = capsys.readouterr().err
    assert f"--output: the run folder {taken / 'run'} lies inside {taken}, which is a file" in err, err
    assert taken.read_text() == "not a folder"  # left as it was


def test_export_and_combine_folders_that_are_files_are_named(capsys, tmp_path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    for argv, flag in ((["export", str(tmp_path), "--merged", str(taken)], "--merged"),
                       (["export", str(tmp_path), "--adapter", str(taken / "inside")], "--adapter"),
                       (["combine", "demo:digits", "a", "b", "--out", str(taken)], "--out")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{flag}: the " in err and f"{taken}" in err and "is a file, not a folder" in err, err
        assert "Errno" not in err, err


@pytest.mark.parametrize("device", ["bogus", "cuda:99", "gpu"])
def test_a_device_that_is_not_there_is_refused_naming_the_flag(capsys, tmp_path, device) -> None:
    assert main(["predict", str(tmp_path), "anything", "--device", device]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and repr(device) in err and "unexpected" not in err, err


@pytest.mark.parametrize(("argv", "flag", "least"), [
    (["resume", "RUN", "--extra-steps", "-1"], "--extra-steps", 0),
    (["generate", "RUN", "hello", "--max-new-tokens", "0"], "--max-new-tokens", 1),
    (["demo", "digits", "--steps", "0"], "--steps", 1),
    (["inspect", "demo:digits", "--rank", "0"], "--rank", 1),
])
def test_counts_out_of_range_are_refused_naming_the_flag(capsys, argv, flag, least) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be at least {least}" in err, err


def test_help_documents_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for code in ("0 done", "1 the run failed, or an unexpected error", "2 bad config", "130 cancelled"):
        assert code in text, code
    assert "LORA_STUDIO_DEBUG=1" in text


def test_the_console_script_reports_an_unexpected_error_in_one_line(tmp_path) -> None:
    """The installed ``lora-studio`` (launcher, then the CLI) in its own process: what a user's
    terminal shows, and its exit code; then the same with LORA_STUDIO_DEBUG=1."""
    model = tmp_path / "broken_model.py"
    model.write_text("def build():\n    return {}['weights']  # a bug in a user's factory\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    env.pop("LORA_STUDIO_DEBUG", None)
    command = [str(BIN / "lora-studio"), "inspect", f"python:{model}:build"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "unexpected KeyError: 'weights'" in done.stderr
    report = _report(done.stderr)
    assert report.parent == tmp_path and "broken_model.py" in report.read_text(encoding="utf-8")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**env, "LORA_STUDIO_DEBUG": "1"})
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr, done.stderr


@pytest.mark.parametrize(("damage", "named"), [
    (b"\xff\xfe{", "sidecar"),  # not UTF-8
    (b'{"architecture": ', "sidecar"),  # cut short
    (b'["not", "an", "object"]', "sidecar"),
    (b'{"architecture": "DigitsNet"}', "weights"),  # no class it can name: the export needs --base-model
])
def test_a_damaged_export_sidecar_is_named(capsys, tmp_path, damage, named) -> None:
    from lora_studio.core import export_merged
    from lora_studio.core.disk.merged_export import sidecar_path_for
    from lora_studio.core.models import load_model

    result = export_merged(load_model(ModelConfig(source="demo", name="digits")).model, tmp_path / "merged")
    sidecar = sidecar_path_for(result.path)
    assert sidecar.is_file()
    sidecar.write_bytes(damage)
    assert main(["predict", str(result.path), "anything"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(sidecar if named == "sidecar" else result.path) in err, err
    assert "--base-model" in err, err


def test_reports_are_new_files_with_the_users_umask(tmp_path, private_temp) -> None:
    from lora_studio.core import write_error_report

    before = os.umask(0o022)
    try:
        first = write_error_report("Traceback: one", tmp_path, ["inspect", "x"])
        second = write_error_report("Traceback: two", tmp_path, ["inspect", "x"])
    finally:
        os.umask(before)
    assert first != second and first.parent == second.parent == tmp_path
    assert "Traceback: one" in first.read_text() and "Traceback: two" in second.read_text()
    assert first.stat().st_mode & 0o777 == 0o644
    assert write_error_report("x", tmp_path / "missing").parent == private_temp  # no such folder: temp
