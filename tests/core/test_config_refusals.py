"""Numbers a run cannot use are refused when the config is validated, naming the field (issue 15):
an infinite or NaN learning rate, and ``--max-steps 0`` on the command line (0 was read as "unset")."""

from __future__ import annotations

import dataclasses

import pytest
from run_configs import digits_run

from lora_studio.core.cli import main


@pytest.mark.parametrize("lr", [float("inf"), float("-inf"), float("nan")])
def test_a_learning_rate_that_is_not_finite_is_refused(tmp_path, lr) -> None:
    config = digits_run(tmp_path / "run")
    with pytest.raises(ValueError, match=r"training\.lr.*finite"):
        config.replace(training=dataclasses.replace(config.training, lr=lr)).validate()


def test_max_steps_zero_is_refused_not_ignored(tmp_path, capsys) -> None:
    path = tmp_path / "RUN.toml"
    digits_run(tmp_path / "run").save(path)
    assert main(["train", str(path), "--max-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-steps must be at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_second_ctrl_c_exits_130_without_a_traceback(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "RUN.toml"
    out = tmp_path / "run"
    digits_run(out, max_steps=100_000).save(path)
    proc = subprocess.Popen([sys.executable, "-m", "lora_studio.core", "train", str(path), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        log = out / "metrics.jsonl"
        while time.monotonic() < deadline and not (log.is_file() and '"step"' in log.read_text()):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)  # waiting for the run to reach its first step, not timing anything
        proc.send_signal(signal.SIGINT)
        first = ""
        while "cancelling" not in first and proc.poll() is None:  # the first Ctrl-C was handled
            first += proc.stderr.readline()
        proc.send_signal(signal.SIGINT)  # ... unless a second one aborts it at once; either way 130
        _, err = proc.communicate(timeout=120)
        err = first + err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert "cancelling after this step" in err, err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_config_path_that_is_a_folder_or_not_text_says_so(tmp_path, capsys) -> None:
    assert main(["train", str(tmp_path)]) == 2
    assert "is a folder; pass the RUN.toml inside it" in capsys.readouterr().err
    binary = tmp_path / "RUN.toml"
    binary.write_bytes(b"\xff\xfe[model]\n")
    assert main(["train", str(binary)]) == 2
    err = capsys.readouterr().err
    assert str(binary) in err and "not UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize("drop", [["model"], ["data"], ["model", "data"]])
def test_a_config_without_model_or_data_is_refused_not_the_demo(tmp_path, drop) -> None:
    from lora_studio.core.run_config import RunConfig

    tables = digits_run(tmp_path / "run").to_toml().split("\n\n")
    kept = [t for t in tables if not any(t.startswith(f"[{name}]") for name in drop)]
    path = tmp_path / "RUN.toml"
    path.write_text("\n\n".join(kept))
    with pytest.raises(ValueError) as refused:
        RunConfig.load(path)
    message = str(refused.value)
    assert str(path) in message and all(f"[{name}]" in message for name in drop)
    assert "is a complete example" in message and ("tables" in message) == (len(drop) > 1)


def test_bad_toml_and_unknown_fields_name_the_file(tmp_path) -> None:
    from lora_studio.core.run_config import RunConfig

    path = tmp_path / "RUN.toml"
    path.write_text("[model]\nsource = \n")
    with pytest.raises(ValueError, match=rf"{path}.*not valid TOML"):
        RunConfig.load(path)
    path.write_text(digits_run(tmp_path / "run").to_toml().replace("[training]\n", "[training]\nsteps = 3\n"))
    with pytest.raises(ValueError, match=rf"{path}: unknown field\(s\) in \[training\]: steps"):
        RunConfig.load(path)
