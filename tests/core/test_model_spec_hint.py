"""A model spec without its source (``resnet18``) or with a wrong one (``tv:resnet18``) is refused
with the spec that was most likely meant: "did you mean torchvision:resnet18?"."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_studio.core import cli_main, parse_model_spec
from lora_studio.core.models.loading import suggest_model_spec


@pytest.mark.parametrize(
    ("spec", "meant"),
    [
        ("resnet18", "torchvision:resnet18"),
        ("ResNet-18", "torchvision:resnet18"),  # case and punctuation forgiven
        ("vit_b_16", "torchvision:vit_b_16"),
        ("tv:resnet18", "torchvision:resnet18"),  # an unknown source is looked past
        ("text", "demo:text"),
        ("Digits", "demo:digits"),
        ("sentence-transformers/all-MiniLM-L6-v2", "transformers:sentence-transformers/all-MiniLM-L6-v2"),
        ("hf:openai-community/gpt2", "transformers:openai-community/gpt2"),
        ("net.py:build", "python:net.py:build"),
        ("py:net.py:build", "python:net.py:build"),
    ],
)
def test_the_meant_spec_is_suggested(spec: str, meant: str) -> None:
    assert suggest_model_spec(spec) == meant
    with pytest.raises(ValueError, match=f"got {spec!r} — did you mean {meant}\\?$"):
        parse_model_spec(spec)
    parse_model_spec(meant)  # and the suggestion itself is a valid spec


def test_a_local_folder_is_a_transformers_model(tmp_path: Path) -> None:
    folder = tmp_path / "my-bert"
    folder.mkdir()
    assert suggest_model_spec(str(folder)) == f"transformers:{folder}"


@pytest.mark.parametrize("spec", ["no-such-model-anywhere", "", "torchvision:", "resnet18.pt"])
def test_nothing_is_guessed_where_nothing_fits(spec: str) -> None:
    assert suggest_model_spec(spec) is None
    with pytest.raises(ValueError) as raised:
        parse_model_spec(spec)
    assert "did you mean" not in str(raised.value)


def test_lora_studio_inspect_resnet18_says_what_was_meant(capsys) -> None:
    assert cli_main(["inspect", "resnet18"]) == 2  # EXIT_USAGE: a bad argument
    err = capsys.readouterr().err
    assert err.strip().endswith("got 'resnet18' — did you mean torchvision:resnet18?")
    assert err.startswith("lora-studio inspect: error: ")
