"""predict: the base column is the model with its adapters disabled, the adapted column the plain
forward, on texts, images, tensors and a custom model's own hooks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_models import perturb_adapters
from torch import nn

from lora_studio.core import LoraConfig, attach, disable_adapters
from lora_studio.core.data.digits import load_digits_tensors
from lora_studio.core.inference import LabelScore, label_names_of, predict
from lora_studio.core.models import LoadedModel, load_demo_model
from lora_studio.core.models.digits_input import digits_image_transform
from lora_studio.core.models.python_factory import load_python_model

TOL = 1e-6  # the same float32 forward twice: only the toggling differs, which must be exact


def _digits(perturb: bool = True) -> LoadedModel:
    loaded = load_demo_model("digits")
    attach(loaded.model, LoraConfig(r=4, targets=["conv1", "conv2", "fc1"], modules_to_save=["fc2"]))
    if perturb:
        perturb_adapters(loaded.model, std=0.1)
        with torch.no_grad():  # the head's trained copy differs from the base head too
            for name, p in loaded.model.named_parameters():
                if "modules_to_save" in name:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    return loaded


def _probabilities(logits: torch.Tensor, names: list[str], scores: list[LabelScore]) -> list[float]:
    """The probability of each label in ``scores``, computed from ``logits`` directly."""
    p = torch.softmax(logits.float(), -1)
    return [float(p[names.index(s.label)]) for s in scores]


def _check_side(logits: torch.Tensor, names: list[str], scores: list[LabelScore], top_k: int) -> None:
    expected = torch.softmax(logits.float(), -1).topk(top_k)
    assert [s.label for s in scores] == [names[int(i)] for i in expected.indices]
    assert [s.probability for s in scores] == pytest.approx(expected.values.tolist(), abs=TOL)


def test_digits_base_is_adapters_disabled_and_adapted_the_plain_forward():
    loaded = _digits()
    images, _ = load_digits_tensors()
    x = images[:40]
    model = loaded.model.eval()
    with torch.no_grad():  # the same batches predict makes (a batch's size can change float rounding)
        adapted = torch.cat([model(x[i:i + 16]) for i in range(0, 40, 16)])
        with disable_adapters(model):
            base = torch.cat([model(x[i:i + 16]) for i in range(0, 40, 16)])
    assert (adapted.argmax(-1) != base.argmax(-1)).any()  # the adapter really changes the output
    predictions = predict(loaded, list(x), top_k=3, batch_size=16)  # three batches, one partial
    names = label_names_of(loaded)
    assert names == [str(i) for i in range(10)]
    assert len(predictions) == 40
    for i, p in enumerate(predictions):
        _check_side(adapted[i], names, p.adapted, 3)
        _check_side(base[i], names, p.base, 3)
        assert p.changed == (p.adapted[0].label != p.base[0].label)


def test_zero_initialised_adapter_gives_base_equal_to_adapted():
    loaded = _digits(perturb=False)  # B = 0 and the head's copy equals the base head
    images, _ = load_digits_tensors()
    for p in predict(loaded, list(images[:8])):
        assert [s.label for s in p.adapted] == [s.label for s in p.base]
        assert [s.probability for s in p.adapted] == pytest.approx([s.probability for s in p.base], abs=TOL)
        assert not p.changed


def test_model_without_adapter_has_no_base_column_and_the_mode_is_restored():
    loaded = load_demo_model("digits")
    loaded.model.train()
    loaded.model.fc1.eval()  # a sub-module the user keeps in eval mode stays so
    images, _ = load_digits_tensors()
    (p,) = predict(loaded, [images[0]], compare_base=True)
    assert p.base is None and p.adapted
    assert loaded.model.training and loaded.model.conv1.training and not loaded.model.fc1.training
    (q,) = predict(_digits(), [images[0]], compare_base=False)
    assert q.base is None


def test_digit_pictures_on_paper_are_read_like_the_data(tmp_path):
    """A data digit drawn dark on white, 16 times larger with margins, is recognised as the digit."""
    loaded = load_demo_model("digits")
    images, labels = load_digits_tensors()
    paths = []
    for i in range(60):
        ink = ((1 - images[i, 0].numpy()) * 255).astype("uint8")
        picture = Image.fromarray(ink).resize((128, 128), Image.BILINEAR)
        canvas = Image.new("L", (200, 180), 255)
        canvas.paste(picture, (41, 27))
        path = tmp_path / f"digit{i}.png"
        canvas.convert("RGB").save(path)
        paths.append(path)
    predictions = predict(loaded, paths, top_k=1)
    right = sum(p.adapted[0].label == str(int(labels[i])) for i, p in enumerate(predictions))
    assert right >= 0.85 * len(paths)  # the model itself gets ~99% of these on the data's own tensors
    assert predictions[0].input == str(paths[0])
    # an 8x8 picture in the data's own form is taken as it is (up to the uint8 rounding)
    raw = Image.fromarray((images[1, 0].numpy() * 255).round().astype("uint8"))
    same = digits_image_transform(raw)
    assert same.shape == (1, 8, 8)
    assert (same - images[1] / images[1].max()).abs().max() <= 1 / 255 + 1e-6


def test_bad_image_path_is_a_value_error_naming_the_file(tmp_path):
    loaded = load_demo_model("digits")
    missing = tmp_path / "nowhere.png"
    with pytest.raises(ValueError, match="nowhere.png"):
        predict(loaded, [missing])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture at all")
    with pytest.raises(ValueError, match="broken.png"):
        predict(loaded, [str(broken)])
    with pytest.raises(ValueError, match="CHW"):
        predict(loaded, [torch.zeros(8, 8)])


def test_cancel_stops_between_batches():
    class After:
        def __init__(self, n: int) -> None:
            self.calls, self.n = 0, n

        @property
        def cancelled(self) -> bool:
            self.calls += 1
            return self.calls > self.n

    images, _ = load_digits_tensors()
    done = predict(_digits(), list(images[:10]), batch_size=4, cancel=After(2))
    assert len(done) == 8  # two whole batches, then stopped


def test_text_classifier_minilm_base_and_adapted():
    loaded = load_demo_model("text")
    attach(loaded.model, LoraConfig(r=4, targets=["query", "value"], modules_to_save=[loaded.head]))
    perturb_adapters(loaded.model, std=0.2)
    texts = ["The striker scored twice in the final.", "Stocks fell sharply.", "A new phone was launched today"]
    names = label_names_of(loaded)
    assert names == loaded.label_names and len(names) == loaded.num_classes
    model = loaded.model.eval()
    batch = loaded.tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        adapted = model(**batch).logits
        with disable_adapters(model):
            base = model(**batch).logits
    assert (adapted - base).abs().max() > 1e-3
    predictions = predict(loaded, texts, top_k=2)
    for i, p in enumerate(predictions):
        assert p.input == texts[i]
        _check_side(adapted[i], names, p.adapted, 2)
        _check_side(base[i], names, p.base, 2)
    with pytest.raises(ValueError, match="takes text"):
        predict(loaded, [torch.zeros(3)])


def test_tiny_bert_classifier_names_from_id2label():
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from lora_studio.core.models import minilm_folder

    tokenizer = BertTokenizerFast.from_pretrained(str(minilm_folder()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, num_labels=3, id2label={0: "neg", 1: "neutral", 2: "pos"},
                        label2id={"neg": 0, "neutral": 1, "pos": 2})
    model = BertForSequenceClassification(config).eval()
    loaded = LoadedModel(model=model, task="sequence-classification", forward_style="transformers",
                         num_classes=3, tokenizer=tokenizer)
    assert label_names_of(loaded) == ["neg", "neutral", "pos"]
    (p,) = predict(loaded, ["fine words"], top_k=5)
    assert p.base is None and len(p.adapted) == 3  # top-k is cut to the classes there are
    assert sum(s.probability for s in p.adapted) == pytest.approx(1.0, abs=1e-5)


FACTORY = '''
import torch
from torch import nn
from lora_studio.core import LabelScore

class Scorer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.relu(self.body(x)))

class Named(Scorer):
    def studio_preprocess(self, inputs):
        return torch.tensor([[float(len(s)), 1.0, 0.0, -1.0] for s in inputs])

    def studio_postprocess(self, logits):
        p = torch.softmax(logits, -1)
        return [[LabelScore("short" if row[0] > row[1] else "long", float(row.max()))] for row in p]

class Raw(Scorer):
    def studio_preprocess(self, inputs):
        return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in inputs])

def named():
    return Named()

def raw():
    return Raw()
'''


def test_custom_factory_hooks_and_raw_output(tmp_path):
    path = tmp_path / "custom.py"
    path.write_text(FACTORY)
    named = load_python_model(f"{path}:named", head="out")
    attach(named.model, LoraConfig(r=2, targets=["body"]))
    perturb_adapters(named.model)
    (p,) = predict(named, ["abc"])
    assert p.adapted[0].label in ("short", "long") and p.base is not None and p.adapted_raw is None
    raw = load_python_model(f"{path}:raw")
    raw.num_classes = None  # no head the studio knows: outputs unnamed
    attach(raw.model, LoraConfig(r=2, targets=["body"]))
    perturb_adapters(raw.model)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]])
    model = raw.model.eval()
    with torch.no_grad():
        adapted, base = model(x), None
        with disable_adapters(model):
            base = model(x)
    predictions = predict(raw, list(x))
    for i, q in enumerate(predictions):
        assert q.adapted == [] and q.adapted_raw is not None and q.base_raw is not None
        assert q.adapted_raw.shape == (2,) and q.adapted_raw.argmax == int(adapted[i].argmax())
        assert q.adapted_raw.top[0][1] == pytest.approx(float(adapted[i].max()), abs=TOL)
        assert q.base_raw.argmax == int(base[i].argmax())
        assert q.base_raw.top[0][1] == pytest.approx(float(base[i].max()), abs=TOL)


def test_factory_label_names_attribute(tmp_path):
    path = tmp_path / "labelled.py"
    path.write_text("from torch import nn\n"
                    "class M(nn.Module):\n"
                    "    label_names = ['cat', 'dog']\n"
                    "    def __init__(self):\n"
                    "        super().__init__(); self.fc = nn.Linear(3 * 4 * 4, 2)\n"
                    "    def forward(self, x):\n"
                    "        return self.fc(x.flatten(1))\n"
                    "def build():\n"
                    "    return M()\n")
    loaded = load_python_model(f"{path}:build")
    assert loaded.label_names == ["cat", "dog"]
    (p,) = predict(loaded, [Image.new("RGB", (4, 4), (10, 200, 30))], top_k=2)
    assert {s.label for s in p.adapted} == {"cat", "dog"}


def test_unnamed_classifier_gets_class_names():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    loaded = LoadedModel(model=model, task="image-classification", forward_style="pixels", num_classes=4)
    (p,) = predict(loaded, [torch.zeros(1, 8, 8)], top_k=4)
    assert sorted(s.label for s in p.adapted) == ["class 0", "class 1", "class 2", "class 3"]
    assert p.adapted_raw is not None  # no names: the raw output is there too


def test_torchvision_pretrained_head_is_named_by_its_weights_categories():
    from lora_studio.core.models import load_torchvision

    pretrained = load_torchvision("resnet18", meta=True)  # the default (pretrained) weights' head
    assert len(pretrained.label_names) == 1000 and pretrained.label_names[0] == "tench"
    assert load_torchvision("resnet18", meta=True, num_classes=5).label_names is None  # a new head: the data's
    assert load_torchvision("resnet18", meta=True, weights="random").label_names is None


def test_a_transparent_digit_picture_is_ink_on_white(tmp_path):
    """A PNG drawn in black on a transparent canvas (what drawing apps save) reads as the same digit."""
    loaded = load_demo_model("digits")
    images, labels = load_digits_tensors()
    i = 7
    ink = Image.fromarray((images[i, 0].numpy() * 255).round().astype("uint8")).resize((96, 96), Image.BILINEAR)
    canvas = Image.new("RGBA", (140, 120), (0, 0, 0, 0))
    canvas.paste(Image.new("RGBA", ink.size, (0, 0, 0, 255)), (22, 12), mask=ink)  # black strokes, alpha = ink
    path = tmp_path / "transparent.png"
    canvas.save(path)
    opaque = tmp_path / "opaque.png"
    paper = Image.new("L", (140, 120), 255)
    paper.paste(Image.new("L", ink.size, 0), (22, 12), mask=ink)
    paper.save(opaque)
    first, second = predict(loaded, [path, opaque], top_k=1)
    assert first.adapted[0].label == second.adapted[0].label == str(int(labels[i]))
