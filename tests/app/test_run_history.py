"""Run folders read back, fresh folder names and rank-study configs (no Qt needed)."""

from __future__ import annotations

import pytest
from short_runs import short_digits

from lora_studio.app.dialogs.rank_study_dialog import parse_ranks
from lora_studio.app.state.run_history import is_run_folder, next_free_run_dir, read_run, study_configs
from lora_studio.core import train


def test_a_run_folder_reads_back_its_config_curves_and_result(tmp_path) -> None:
    config = short_digits(tmp_path / "run", steps=4, eval_every=2)
    result = train(config)
    record = read_run(tmp_path / "run")
    assert record.config.lora.r == config.lora.r and record.config.training.max_steps == 4
    assert record.train_steps == [1, 2, 3, 4] and len(record.train_loss) == 4
    assert record.eval_steps == [0, 2, 4] and record.eval_accuracy[-1] == result.last_eval["accuracy"]
    assert record.status == "finished" and record.trainable == result.trainable_parameters
    assert record.legend == f"run · LoRA r=4 · {result.trainable_parameters:,} trainable"
    assert is_run_folder(tmp_path / "run") and not is_run_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_run(tmp_path)



def test_a_damaged_log_or_config_never_raises_past_the_history(tmp_path) -> None:
    train(short_digits(tmp_path / "run", steps=3, eval_every=0))
    log = tmp_path / "run" / "metrics.jsonl"
    intact = read_run(tmp_path / "run")
    damage = [b"\xff\xfe not utf-8", b"[1, 2]", b'{"event": "StepMetrics", "step": 9}',
              b'{"event": "StepMetrics", "step": "x", "loss": 1}', b'{"event": "EvalMetrics", "step": 9, "loss": "x"}',
              b'{"event": "Failed"}', b'{"event": "Samples"}', b'{"event": "StepMet']
    log.write_bytes(log.read_bytes() + b"\n".join(damage))
    damaged = read_run(tmp_path / "run")  # every damaged line skipped, every intact one kept
    assert (damaged.train_steps, damaged.train_loss, damaged.status) == (
        intact.train_steps, intact.train_loss, intact.status)
    (tmp_path / "run" / "run.toml").write_bytes(b"\xff[model")
    assert not is_run_folder(tmp_path / "run")
    with pytest.raises(ValueError, match="run.toml"):
        read_run(tmp_path / "run")


def test_next_free_run_dir_never_reuses_a_folder_with_content(tmp_path) -> None:
    assert next_free_run_dir(tmp_path / "run") == tmp_path / "run"
    (tmp_path / "run").mkdir()
    assert next_free_run_dir(tmp_path / "run") == tmp_path / "run"  # empty: nothing to lose
    (tmp_path / "run" / "run.toml").write_text("")
    assert next_free_run_dir(tmp_path / "run") == tmp_path / "run-2"


def test_study_configs_vary_the_rank_and_add_full_fine_tuning(tmp_path) -> None:
    base = short_digits(tmp_path / "demo").replace(lora=short_digits(tmp_path).lora.replace(rank_pattern={"fc1": 2}))
    runs = study_configs(base, [4, 16], full_lr=1e-3)
    assert [(c.training.mode, c.lora.r, c.lora.rank_pattern) for c in runs[:2]] == [("lora", 4, {}), ("lora", 16, {})]
    assert runs[2].training.mode == "full" and runs[2].training.lr == 1e-3
    assert [c.output.dir for c in runs] == [str(tmp_path / "demo-study" / n) for n in ("r4", "r16", "full")]
    assert all(c.lora.alpha == base.lora.alpha for c in runs)  # alpha is not retuned with r
    with pytest.raises(ValueError, match="at least one"):
        study_configs(base, [])


def test_parse_ranks() -> None:
    assert parse_ranks("4, 8 16,32") == [4, 8, 16, 32] and parse_ranks(" ") == []
    with pytest.raises(ValueError, match="'x'"):
        parse_ranks("4, x")
    with pytest.raises(ValueError, match="'0'"):
        parse_ranks("0")
