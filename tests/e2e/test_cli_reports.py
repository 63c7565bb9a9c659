"""What the CLI reports is what happened (issue 15): the progress bar's loss and lr belong to the step
it counts; a full fine-tuning run says it holds a model (not an adapter) and exports its best or
final weights; a run's weights that do not fit are refused naming the tensor; no library's load
report about a "newly initialized" head that the run trains."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
import torch

from lora_studio.core.cli import main
from lora_studio.core.disk.safe_loading import load_safetensors
from lora_studio.core.run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig
from lora_studio.core.training import StepMetrics, latest_checkpoint
from lora_studio.core.training.progress import ProgressPrinter


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the progress bar ----------------------------------------------------------------------------
def _step(step: int, total: int) -> StepMetrics:
    # each step's loss and lr are unlike every other step's, so a frame shows whose they are
    return StepMetrics(step=step, total_steps=total, epoch=0.0, loss=1.0 + step / 1000, learning_rate=step * 1e-4,
                       grad_norm=1.0, samples_per_second=1.0, tokens_per_second=None, memory_bytes=None,
                       eta_seconds=0.0)


def test_the_bar_shows_each_steps_own_loss_and_lr() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream=stream, mininterval=0)  # redraw at every step
    total = 6
    for step in range(1, total + 1):
        printer.show(_step(step, total))
    printer.close()
    frames = [f for f in re.split(r"[\r\n]", stream.getvalue()) if re.search(r"\d+/\d+", f)]
    checked = 0
    for frame in frames:
        count = int(re.search(r"(\d+)/%d" % total, frame).group(1))
        shown = re.search(r"loss=([\d.]+), lr=([\d.e+-]+)", frame)
        if shown is None:
            assert count == 0, frame  # only a bar drawn before any step may lack them
            continue
        expected = _step(count, total)
        assert shown.group(1) == f"{expected.loss:.4f}", frame
        assert shown.group(2) == f"{expected.learning_rate:.2e}", frame
        checked += 1
    assert checked >= total, stream.getvalue()  # every step was drawn at least once


# -- a full fine-tuning run --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, str]:
    """A full fine-tuning run of the digits demo, 4 steps, evaluated (so best/ is saved) at 2 and 4."""
    folder = tmp_path_factory.mktemp("full")
    out = folder / "run"
    config = folder / "RUN.toml"
    RunConfig(
        model=ModelConfig(source="demo", name="digits"),
        data=DataConfig(kind="digits", shift="rotate", max_samples=96),
        training=TrainingConfig(mode="full", max_steps=4, batch_size=16, lr=1e-3, eval_every=2, checkpoint_every=2,
                                device="cpu"),
        output=OutputConfig(dir=str(out), tensorboard=False),
    ).save(config)
    capture = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(capture):
        assert main(["train", str(config), "--quiet"]) == 0
    return out, capture.getvalue()


def test_a_full_runs_summary_says_it_holds_the_model(full_run) -> None:
    out, summary = full_run
    assert f"model: {out / 'adapter'} (the whole fine-tuned model)" in summary, summary
    assert "adapter:" not in summary, summary


def test_a_full_run_exports_its_best_and_its_final_weights(full_run, capsys, tmp_path) -> None:
    out, _ = full_run
    # best/ holds weights unlike the final ones, so the export shows which file it read
    saved = load_safetensors(out / "best" / "model.safetensors")
    best = {k: v * 0.5 if v.is_floating_point() else v for k, v in saved.items()}
    run = tmp_path / "run"
    shutil.copytree(out, run)
    from safetensors.torch import save_file

    save_file(best, str(run / "best" / "model.safetensors"))
    for which, expected in (("best", best), ("final", load_safetensors(latest_checkpoint(run) / "model.safetensors"))):
        code, printed, err = _cli(capsys, "export", run, "--merged", tmp_path / which, "--which", which)
        assert code == 0, err
        assert f"model of the full fine-tuning run (safetensors, float32, the {which} weights)" in printed, printed
        assert "adapter" not in err, err
        exported = load_safetensors(tmp_path / which / "model.safetensors")
        for key, value in expected.items():
            if value.is_floating_point():
                assert torch.equal(exported[key], value), (which, key)  # float32 written as read: exact
    code, _, err = _cli(capsys, "export", run, "--adapter", tmp_path / "adapter")
    assert code == 2 and "full fine-tuning run: it holds the whole model, no adapter; use --merged" in err, err
    for command in (["adapters", "list", run], ["adapters", "show", run], ["adapters", "show", run / "best"]):
        code, _, err = _cli(capsys, *command)
        assert code == 2 and "holds the whole model" in err and f"lora-studio export {run} --merged" in err, err


def test_a_full_runs_best_weights_that_do_not_fit_are_refused_naming_the_tensor(full_run, capsys, tmp_path) -> None:
    from safetensors.torch import save_file

    out, _ = full_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    best = run / "best" / "model.safetensors"
    good = load_safetensors(best)
    for name, change in (("NaN", lambda t: torch.full_like(t, float("nan"))),
                         ("int32", lambda t: t.view(torch.int32)),
                         ("shape", lambda t: t[:1])):
        tensors = dict(good)
        tensors["fc1.weight"] = change(good["fc1.weight"]).contiguous()
        save_file(tensors, str(best))
        code, _, err = _cli(capsys, "export", run, "--merged", tmp_path / name, "--which", "best")
        assert code == 2, (name, err)
        assert f"{best}: tensor 'fc1.weight'" in err and "Traceback" not in err, (name, err)
        assert not (tmp_path / name).exists(), name  # nothing written
    del good["fc1.weight"]
    save_file(good, str(best))
    code, _, err = _cli(capsys, "export", run, "--merged", tmp_path / "missing", "--which", "best")
    assert code == 2 and f"{best} lacks 1 of the model's tensors, e.g. 'fc1.weight'" in err, err


def test_a_full_run_without_a_best_model_says_so(full_run, capsys, tmp_path) -> None:
    out, _ = full_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "best")
    code, _, err = _cli(capsys, "export", run, "--merged", tmp_path / "m", "--which", "best")
    assert code == 2 and "holds no best model (best/model.safetensors" in err, err


# -- no load report about the head --------------------------------------------------------------------
def test_loading_a_classifier_prints_no_load_report_and_notes_weights_that_start_random(capfd, tmp_path) -> None:
    """MiniLM has no classification head: transformers reports it MISSING, "newly initialized", though
    the run trains it (issue 15).  That report stays off the console; a weight missing outside the
    head is a real problem, and is named in a note instead."""
    from safetensors.torch import save_file

    from lora_studio.core.models import load_transformers
    from lora_studio.core.models.demo_models import minilm_folder

    loaded = load_transformers(str(minilm_folder()), task="sequence-classification", num_classes=3)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err, err
    assert loaded.head == "classifier" and loaded.notes == []

    damaged = tmp_path / "minilm"
    shutil.copytree(minilm_folder(), damaged)
    tensors = load_safetensors(damaged / "model.safetensors")
    dropped = next(k for k in tensors if k.endswith("attention.self.query.weight"))
    del tensors[dropped]
    save_file(tensors, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    loaded = load_transformers(str(damaged), task="sequence-classification", num_classes=3)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err, err
    assert len(loaded.notes) == 1 and "start random" in loaded.notes[0], loaded.notes
    assert dropped.split(".", 1)[-1] in loaded.notes[0] and "classifier.weight" not in loaded.notes[0], loaded.notes


def test_exporting_a_text_run_shows_no_load_report(capfd, tmp_path) -> None:
    """The issue's case: a MiniLM classifier run exported merged; the console has the command's own
    line, not transformers' report of the head as MISSING nor its loading bar."""
    from lora_studio.core import LoraConfig
    from lora_studio.core.data import demo_sentences_path

    config = tmp_path / "RUN.toml"
    RunConfig(
        model=ModelConfig(source="demo", name="text"),
        data=DataConfig(kind="text-classification", train=demo_sentences_path(), validation_split=0.25,
                        max_length=16),
        lora=LoraConfig(r=2, alpha=4, targets=["query", "value"]),
        training=TrainingConfig(max_steps=1, batch_size=4, eval_every=0, checkpoint_every=0, device="cpu"),
        output=OutputConfig(dir=str(tmp_path / "run"), tensorboard=False),
    ).save(config)
    assert main(["train", str(config), "--quiet"]) == 0
    capfd.readouterr()
    assert main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "merged")]) == 0
    printed = capfd.readouterr()
    assert "merged model (transformers" in printed.out, printed.out
    for noise in ("LOAD REPORT", "MISSING", "newly initialized", "Loading weights"):
        assert noise not in printed.err, printed.err
