"""`lora-studio adapters list|show` and `lora-studio combine` on two tiny digits runs (two domains)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_studio.core import (
    LoraConfig,
    add_weighted_adapter,
    load_adapter,
    read_adapter_facts,
    set_active_adapter,
)
from lora_studio.core.cli import main
from lora_studio.core.data.digits import load_digits_tensors
from lora_studio.core.run_config import DataConfig, ModelConfig, OutputConfig, RunConfig, TrainingConfig
from lora_studio.core.training import CancelToken, train
from lora_studio.core.training.trained_run import load_for_inference

TOL = 1e-5


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _run(out: Path, shift: str, seed: int) -> Path:
    config = RunConfig(
        model=ModelConfig(source="demo", name="digits"),
        data=DataConfig(kind="digits", shift=shift, max_samples=128),
        lora=LoraConfig(r=4, alpha=8, targets=["conv1", "conv2", "fc1"]),
        training=TrainingConfig(max_steps=4, batch_size=16, lr=2e-2, eval_every=0, checkpoint_every=0, device="cpu",
                                seed=seed),  # fmt: skip
        output=OutputConfig(dir=str(out), tensorboard=False),
    )
    assert train(config, lambda event: None, CancelToken()).status == "finished"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("domains")
    return _run(root / "rotated", "rotate", 1), _run(root / "inverted", "invert", 2)


def _digits(n: int = 16) -> torch.Tensor:
    images, _ = load_digits_tensors("rotate")
    return images[:n]


def test_adapters_list_one_line_per_folder(runs, capsys):
    rotated, inverted = runs
    code, out, err = _cli(capsys, "adapters", "list", rotated, inverted / "adapter")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:6] == ["name", "variant", "rank", "targets", "size", "base"]
    rows = lines[1:]
    names = [r.split()[0] for r in rows]
    assert names == ["rotated", "rotated-best", "inverted"], out  # a run folder lists its adapter/ and best/
    assert all(r.split()[1:3] == ["lora", "4"] for r in rows)
    assert all("conv1,conv2,fc1" in r and "demo:digits" in r for r in rows)


def test_adapters_show_and_json(runs, capsys):
    rotated, _ = runs
    code, out, err = _cli(capsys, "adapters", "show", rotated / "adapter")
    assert code == 0, err
    assert "variant" in out and "conv2" in out and "run_summary" in out
    code, out, _ = _cli(capsys, "adapters", "show", rotated / "adapter", "--json")
    data = json.loads(out)
    assert data["rank"] == 4 and data["ours"] and data["run_dir"] == str(rotated)
    assert data == read_adapter_facts(rotated / "adapter").to_dict()


def test_bad_folders_get_one_line_errors(runs, tmp_path, capsys):
    code, out, err = _cli(capsys, "adapters", "list", tmp_path / "missing", runs[0])
    assert code == 2 and "no such folder" in err and "rotated" in out and "Traceback" not in err
    code, _, err = _cli(capsys, "adapters", "show", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "adapter_config.json" in err


COMBINE_CASES = [
    ("linear", []),
    ("ties", ["--density", "0.5"]),
    ("dare_linear", ["--density", "0.7", "--seed", "3"]),
    ("cat", []),
    ("magnitude_prune_svd", ["--density", "0.5", "--svd-rank", "6"]),
]


@pytest.mark.parametrize("method,extra", COMBINE_CASES)
def test_combine_equals_the_python_api(runs, tmp_path, capsys, method, extra):
    rotated, inverted = runs
    out = tmp_path / "combined"
    code, text, err = _cli(capsys, "combine", "demo:digits", rotated, inverted, "--weights", "0.6,0.4",
                           "--method", method, *extra, "--out", out)  # fmt: skip
    assert code == 0, err
    assert f"with {method}" in text
    facts = read_adapter_facts(out)
    assert facts.run_summary["method"] == method and facts.base_model_name_or_path == "demo:digits"

    # The same combination through the Python API, on the base with both adapters loaded by name.
    loaded = load_for_inference(rotated / "adapter")
    model = loaded.model
    load_adapter(model, inverted / "adapter", adapter_name="b")
    settings = {"density": float(extra[1])} if extra else {}
    if "--svd-rank" in extra:
        settings["svd_rank"] = 6
    torch.manual_seed(int(extra[3]) if "--seed" in extra else 0)
    add_weighted_adapter(model, ["default", "b"], [0.6, 0.4], "mix", combination_type=method, **settings,
                         combine_modules_to_save=True)  # fmt: skip
    set_active_adapter(model, "mix")
    x = _digits()
    with torch.no_grad():
        expected = model(x)
        combined = load_for_inference(out).model
        torch.testing.assert_close(combined(x), expected, atol=TOL, rtol=0)


def test_combine_refusals_are_one_line_with_the_method_that_works(runs, tmp_path, capsys):
    rotated, inverted = runs
    code, _, err = _cli(capsys, "combine", "demo:digits", rotated, inverted, "--method", "ties",
                        "--out", tmp_path / "x")  # fmt: skip
    assert code == 2 and "needs density" in err and err.count("\n") == 1
    code, _, err = _cli(capsys, "combine", "demo:digits", rotated, inverted, "--weights", "1", "--out", tmp_path / "x")
    assert code == 2 and "one per adapter" in err
    code, _, err = _cli(capsys, "combine", "demo:digits", rotated, "--out", tmp_path / "x")
    assert code == 2 and "two or more" in err
    code, _, err = _cli(capsys, "combine", "demo:text", rotated, inverted, "--out", tmp_path / "x")
    assert code == 2 and "another base model" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_export_merges_a_combined_adapter_folder(runs, tmp_path, capsys):
    rotated, inverted = runs
    combined = tmp_path / "combined"
    assert _cli(capsys, "combine", "demo:digits", rotated, inverted, "--method", "cat", "--out", combined)[0] == 0
    code, text, err = _cli(capsys, "export", combined, "--merged", tmp_path / "merged")
    assert code == 0, err
    merged_file = tmp_path / "merged" / "model.safetensors"
    assert merged_file.is_file() and "merged model" in text
    x = _digits()
    with torch.no_grad():
        adapted = load_for_inference(combined).model(x)
        merged = load_for_inference(merged_file).model(x)
    torch.testing.assert_close(merged, adapted, atol=TOL, rtol=0)
    code, _, err = _cli(capsys, "export", tmp_path / "nothing", "--merged", tmp_path / "m2")
    assert code == 2 and "not a run folder" in err
