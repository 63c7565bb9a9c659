"""torchvision classifiers by registry name, with pretrained, local or random weights."""

from __future__ import annotations

from pathlib import Path

import torch

from ..disk.safe_loading import load_weights
from .heads import find_head, replace_head
from .loaded_model import LoadedModel
from .offline import offline


def torchvision_names() -> list[str]:
    """Every classification model torchvision's registry knows."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def load_torchvision(
    name: str, *, weights: str = "default", num_classes: int | None = None, head: str | None = None, meta: bool = False
) -> LoadedModel:
    """Build torchvision model ``name``; ``weights`` is 'default' (pretrained), 'random' or a weights file.

    With ``num_classes`` the output head is replaced (when its width differs); the head's name
    is returned so it trains fully with the adapter.  ``meta`` builds without allocating weights.
    """
    import torchvision

    names = torchvision_names()
    if name not in names:
        close = [n for n in names if n.startswith(name[:3])][:8] or names[:12]
        raise ValueError(f"torchvision has no model {name!r} among its classifiers; some it has: {', '.join(close)}, ...")
    pretrained = torchvision.models.get_model_weights(name).DEFAULT
    notes = []
    if meta:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
    elif weights == "default":
        model = torchvision.models.get_model(name, weights=None)
        model.load_state_dict(_pretrained_state(name, pretrained))
        notes.append(f"pretrained weights {pretrained}")
    elif weights == "random":
        model = torchvision.models.get_model(name, weights=None)
        notes.append("random weights (as asked)")
    else:
        model = torchvision.models.get_model(name, weights=None)
        _load_file(model, Path(weights))
        notes.append(f"weights from {weights}")
    head_name = head or find_head(model)
    new_head = False
    if num_classes is not None:
        with torch.device("meta") if meta else torch.device("cpu"):
            if replace_head(model, head_name, num_classes):
                new_head = True
                notes.append(f"new head {head_name!r} with {num_classes} classes (trained with the adapter)")
    # The pretrained head's outputs are the weights' categories (ImageNet's, ...); a new head's are the data's.
    categories = pretrained.meta.get("categories") if weights == "default" and not new_head else None
    return LoadedModel(
        model=model,
        task="image-classification",
        forward_style="pixels",
        head=head_name,
        num_classes=num_classes or model.get_submodule(head_name).out_features,
        label_names=list(categories) if categories else None,
        image_transform=pretrained.transforms(),
        name_or_path=f"torchvision:{name}",
        notes=notes,
    )


def _pretrained_state(name: str, pretrained) -> dict[str, torch.Tensor]:
    """The pretrained state dict from torch's cache, downloading it when online."""
    url = pretrained.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file() and offline():
        raise OSError(
            f"the pretrained weights of torchvision:{name} are not in the local cache ({cached}) and this "
            "process is offline; go online once, put the file there, give a local weights file, or use "
            "weights = 'random'"
        )
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash a RuntimeError
        raise OSError(
            f"could not download the pretrained weights of torchvision:{name} from {url} (offline?): {exc}. "
            f"Put the file at {cached}, give a local weights file, or use weights = 'random'"
        ) from None


def _load_file(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"model.weights file {path} does not exist")
    state = load_weights(path)  # safetensors, or a legacy .pt/.pth read without unpickling code
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
