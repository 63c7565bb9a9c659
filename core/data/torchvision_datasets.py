"""torchvision's built-in datasets by name (MNIST, FashionMNIST, CIFAR10, ...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..models.offline import offline
from .errors import DataError

DEFAULT_ROOT = Path.home() / ".cache" / "lora-studio" / "datasets"


def _dataset_class(name: str):
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if not isinstance(cls, type):
        known = sorted(n for n in tvd.__all__ if n[0].isupper())
        raise DataError(f"torchvision has no dataset {name!r}; it has: {', '.join(known[:30])}, ...")
    return cls


def open_torchvision_dataset(name: str, *, train: bool, root: str | None = None, download: bool = True) -> Any:
    """The raw dataset (PIL images, integer targets), from ``root`` or downloaded there when allowed."""
    cls = _dataset_class(name)
    folder = Path(root) if root else DEFAULT_ROOT
    try:
        return cls(root=str(folder), train=train, download=False)
    except RuntimeError:
        pass  # not there yet
    except TypeError:
        raise DataError(f"torchvision dataset {name} has no train/test split argument; use an image folder") from None
    if not download or offline():
        why = "downloading is off (data.download = false)" if not download else "this process is offline"
        raise DataError(f"torchvision dataset {name} is not in {folder} and {why}; download it once online, "
                        "or point data.root at a folder that holds it")
    try:
        return cls(root=str(folder), train=train, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"could not download torchvision dataset {name} into {folder} (offline?): {exc}") from None


class TorchvisionExamples(Dataset):
    """``{"pixel_values", "labels"}`` examples from a torchvision dataset and the model's transform."""

    def __init__(self, base: Any, transform: Callable[[Any], Any], image_mode: str = "RGB") -> None:
        self.base, self.transform, self.image_mode = base, transform, image_mode

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.base[index]
        return {"pixel_values": self.transform(image.convert(self.image_mode)), "labels": int(label)}
