"""Model sources: torchvision with a new head, transformers tasks, a user's factory, the demos, meta builds."""

import textwrap

import pytest
import torch
from safetensors.torch import save_file

from lora_studio.core import LoraConfig
from lora_studio.core.models import build_on_meta, load_model, minilm_folder, parse_model_spec
from lora_studio.core.run_config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from lora_studio.core.training import build_model


def test_torchvision_random_weights_new_head_trains_with_the_adapter(tmp_path) -> None:
    loaded = load_model(ModelConfig(source="torchvision", name="resnet18", weights="random"), num_classes=3)
    assert loaded.head == "fc" and loaded.model.fc.out_features == 3
    (tmp_path / "a").mkdir()
    config = RunConfig(
        model=ModelConfig(source="torchvision", name="mobilenet_v3_small", weights="random", num_classes=4),
        data=DataConfig(kind="digits"),  # only the label count matters here
        lora=LoraConfig(r=2, targets=r"features\.1\.block\.\d\.fc\d"),
        training=TrainingConfig(),
    )
    with pytest.raises(ValueError, match="the data has 10 classes, more than model.num_classes = 4"):
        build_model(config)
    config.model.num_classes = 10
    built, _, _ = build_model(config)
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("classifier.3.modules_to_save") for n in trainable), "the new head trains"
    assert built.model.classifier[3].original_module.out_features == 10


def test_torchvision_pretrained_offline_gives_a_clear_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"pretrained weights of torchvision:resnet18 are not in the local cache"):
        load_model(ModelConfig(source="torchvision", name="resnet18"))
    with pytest.raises(ValueError, match="torchvision has no model 'resnet_nope'"):
        load_model(ModelConfig(source="torchvision", name="resnet_nope"))


def test_torchvision_local_weights_file(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.get_model("resnet18", weights=None)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_model(ModelConfig(source="torchvision", name="resnet18", weights=str(tmp_path / "w.safetensors")))
    assert torch.equal(loaded.model.conv1.weight, source.conv1.weight)


def test_transformers_offline_unknown_id_is_a_clear_message() -> None:
    with pytest.raises(OSError, match=r"could not load the config of 'nobody/no-such-model'.*offline"):
        load_model(ModelConfig(source="transformers", name="nobody/no-such-model", task="causal-lm"))


def test_transformers_local_folder_with_tokenizer_for_sequence_classification() -> None:
    loaded = load_model(ModelConfig(source="transformers", name=str(minilm_folder()),
                                    task="sequence-classification"), num_classes=3, label_names=["a", "b", "c"])
    assert loaded.head == "classifier" and loaded.tokenizer is not None
    assert loaded.model.config.id2label == {0: "a", 1: "b", 2: "c"}
    ids = loaded.tokenizer(["hello world"], return_tensors="pt")
    assert loaded.model(**ids).logits.shape == (1, 3)


def test_transformers_low_precision_and_gradient_checkpointing() -> None:
    loaded = load_model(ModelConfig(source="transformers", name=str(minilm_folder()), task="sequence-classification",
                                    dtype="bfloat16", gradient_checkpointing=True), num_classes=2)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.model.is_gradient_checkpointing


def test_python_factory_with_checkpoint(tmp_path) -> None:
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        from torch import nn
        def make(num_classes=5):
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, num_classes))
    """))
    torch.manual_seed(1)
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5))
    save_file(reference.state_dict(), str(tmp_path / "mine.safetensors"))
    loaded = load_model(ModelConfig(source="python", name=f"{tmp_path / 'mine.py'}:make",
                                    checkpoint=str(tmp_path / "mine.safetensors")))
    x = torch.randn(2, 4)
    assert torch.equal(loaded.model(x), reference(x)) and loaded.head == "2" and loaded.num_classes == 5
    with pytest.raises(ValueError, match="has no function 'build'; it defines: make"):
        load_model(ModelConfig(source="python", name=f"{tmp_path / 'mine.py'}:build"))
    with pytest.raises(ValueError, match="does not fit"):
        load_model(ModelConfig(source="python", name=f"{tmp_path / 'mine.py'}:make",
                               checkpoint=str(tmp_path / "mine.safetensors")), num_classes=7)


@pytest.mark.parametrize("spec", ["torchvision:vit_b_16", "demo:digits", "demo:text",
                                  f"transformers:{minilm_folder()}"])
def test_every_source_builds_on_meta(spec) -> None:
    model = build_on_meta(spec)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 0


def test_model_spec_errors() -> None:
    with pytest.raises(ValueError, match="model must be torchvision:NAME"):
        parse_model_spec("resnet18")
    with pytest.raises(ValueError, match="model.name must be 'path/to/file.py:function_name'"):
        ModelConfig(source="python", name="file.py")
