"""Images in one sub-folder per class, read with the model's preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .errors import DataError, require_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_folder_classes(root: str | Path) -> list[str]:
    """The class names: the sub-folders of ``root`` that hold at least one image, sorted."""
    root = require_file(root, "image folder")
    if not root.is_dir():
        raise DataError(f"image folder {root} is a file; give a folder with one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and any(folder_images(d)))
    if not classes:
        raise DataError(f"image folder {root} has no sub-folders with images (one sub-folder per class)")
    return classes


def folder_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted: one class's images."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolderDataset(Dataset):
    """Every readable image below ``root``; labels index ``class_names``.

    Each file is checked when the dataset is built, so an unreadable one is found before
    training starts: with ``bad_images='skip'`` it is dropped and counted (``skipped``), with
    ``'error'`` the build fails naming it.
    """

    def __init__(
        self, root: str | Path, class_names: list[str], transform: Callable[[Any], Any], *,
        image_mode: str = "RGB", bad_images: str = "error",
    ) -> None:
        from PIL import Image

        self.transform, self.image_mode = transform, image_mode
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[Path] = []
        root = Path(root)
        found = image_folder_classes(root)
        extra = sorted(set(found) - set(class_names))
        if extra:
            raise DataError(f"{root} has class folder(s) {', '.join(extra)} that are not in the label set "
                            f"({', '.join(class_names)})")
        for label, name in enumerate(class_names):
            folder = root / name
            for path in folder_images(folder) if folder.is_dir() else []:
                try:
                    with Image.open(path) as image:
                        image.verify()  # reads the whole file's structure without decoding pixels
                except Exception as exc:  # PIL raises many types for a damaged file
                    if bad_images == "error":
                        raise DataError(f"unreadable image {path} ({exc}); set data.bad_images = 'skip' to "
                                        "leave such files out") from None
                    self.skipped.append(path)
                    continue
                self.samples.append((path, label))
        if not self.samples:
            raise DataError(f"image folder {root} holds no readable images")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as image:
            return {"pixel_values": self.transform(image.convert(self.image_mode)), "labels": label}
