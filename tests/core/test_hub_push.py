"""Pushing a run to the Hub, against a local stand-in for the Hub API (no network): the files a
repository gets (the adapter in PEFT's format or the merged model, a model card, the loss plot),
a failed upload that changes nothing, and a push refused offline before anything is staged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from run_configs import digits_run, with_training

from lora_studio.core.training import train
from lora_studio.core.training.hub_push import push_run


class FakeHub:
    """The two HfApi calls a push makes; a repository is a folder of what its one commit held."""

    def __init__(self, root: Path, fail: Exception | None = None) -> None:
        self.root, self.fail, self.created = root, fail, []

    def create_repo(self, repo_id: str, *, private: bool = False, exist_ok: bool = False) -> str:
        self.created.append((repo_id, private))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id: str, folder_path: str, commit_message: str) -> None:
        if self.fail is not None:
            raise self.fail
        target = self.root / repo_id
        shutil.copytree(folder_path, target, dirs_exist_ok=True)
        (target / ".commit").write_text(commit_message)


@pytest.fixture(autouse=True)
def hub_switched_on(monkeypatch) -> None:
    """The suite runs with HF_HUB_OFFLINE=1 (nothing downloads); the stand-in needs no network either."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("push") / "digits-run"
    assert train(digits_run(out, max_steps=4, eval_every=2)).status == "finished"
    return out


def test_an_adapter_push_sends_peft_files_a_card_and_the_loss_plot(tmp_path, run_dir) -> None:
    hub = FakeHub(tmp_path)
    result = push_run(run_dir, "alice/digits-lora", private=True, api=hub)
    repo = tmp_path / "alice" / "digits-lora"
    assert hub.created == [("alice/digits-lora", True)] and result.url.endswith("alice/digits-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "loss.svg"} <= set(result.files)
    assert json.loads((repo / "adapter_config.json").read_text())["peft_type"] == "LORA"
    card = (repo / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "- lora-studio" in card
    assert "r = 4, alpha = 8" in card and "best validation loss" in card and "![Training loss](loss.svg)" in card
    svg = (repo / "loss.svg").read_text()
    assert svg.startswith("<svg") and svg.count(",") >= 4  # four logged steps on the polyline


def test_a_merged_push_sends_the_model(tmp_path, run_dir) -> None:
    result = push_run(run_dir, "alice/digits-merged", kind="merged", api=FakeHub(tmp_path))
    assert any(name.endswith(".safetensors") for name in result.files) and "README.md" in result.files
    assert "library_name: transformers" in (tmp_path / "alice" / "digits-merged" / "README.md").read_text()


def test_a_failed_upload_changes_nothing_and_says_what_to_do(tmp_path, run_dir) -> None:
    hub = FakeHub(tmp_path, fail=ConnectionError("no route to host"))
    with pytest.raises(OSError, match="nothing was changed there.*huggingface-cli login"):
        push_run(run_dir, "alice/digits-lora", api=hub)
    assert not (tmp_path / "alice").exists()


def test_offline_a_push_is_refused_before_anything_is_staged(tmp_path, run_dir, monkeypatch) -> None:
    from lora_studio.core.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub(tmp_path)
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1.*nothing was sent"):
        push_run(run_dir, "alice/digits-lora", api=hub)
    assert hub.created == []
    assert main(["push", str(run_dir), "alice/digits-lora"]) == 2  # the real client is never reached


@pytest.mark.parametrize("repo_id", ["no-owner", "a/b/c", "/name"])
def test_a_bad_repository_id_is_refused(run_dir, repo_id) -> None:
    with pytest.raises(ValueError, match="must be 'owner/name'"):
        push_run(run_dir, repo_id, api=FakeHub(Path("/nonexistent")))


def test_a_full_run_has_no_adapter_to_push(tmp_path) -> None:
    out = tmp_path / "full"
    assert train(with_training(digits_run(out, max_steps=2), mode="full", lr=1e-3)).status == "finished"
    with pytest.raises(ValueError, match="full fine-tuning run.*--merged"):
        push_run(out, "alice/x", api=FakeHub(tmp_path))
