"""Images in one sub-folder per class, read with the model's preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .errors import DataError, require_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SKIP_HINT = "set data.bad_images = 'skip' to leave such files out"


def check_image_file(path: str | Path) -> str | None:
    """Why ``path`` cannot be trained on ("zero bytes", "not an image", "truncated", ...), or None when it decodes.

    The one image check: the engine's dataset and the window's data panel both call it, so
    they never disagree.  The file is fully decoded (``load()``), not only ``verify()``-ed:
    a truncated JPEG passes ``verify()`` and would otherwise stop a run at its first step.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "zero bytes"
        with Image.open(path) as image:
            image.verify()  # the file's structure and checksums (PNG CRCs), without decoding
        with Image.open(path) as image:  # verify() leaves the image unusable: open it again
            image.load()  # decodes every pixel; raises for data cut short
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError:
        return "too large to decode safely"
    except PermissionError:
        return "cannot be read (permission denied)"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL raises these for damaged data
        text = str(exc)
        if "truncat" in text.lower() or isinstance(exc, EOFError):
            return "truncated"
        return f"damaged ({text})" if text else "damaged"
    return None


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

    Each file is checked (fully decoded, by :func:`check_image_file`) when the dataset is
    built, so an unreadable one is found before training starts: with ``bad_images='skip'``
    it is dropped and counted (``skipped``, with ``skip_reasons``), with ``'error'`` the
    build fails naming it.
    """

    def __init__(
        self, root: str | Path, class_names: list[str], transform: Callable[[Any], Any], *,
        image_mode: str = "RGB", bad_images: str = "error",
    ) -> None:
        self.transform, self.image_mode, self.bad_images = transform, image_mode, bad_images
        self.broken: set[int] = set()  # samples that failed to load after the check (bad_images = 'skip')
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[Path] = []
        self.skip_reasons: dict[Path, str] = {}
        root = Path(root)
        found = image_folder_classes(root)
        extra = sorted(set(found) - set(class_names))
        if extra:
            raise DataError(f"{root} has class folder(s) {', '.join(extra)} that are not in the label set "
                            f"({', '.join(class_names)})")
        for label, name in enumerate(class_names):
            folder = root / name
            for path in folder_images(folder) if folder.is_dir() else []:
                reason = check_image_file(path)
                if reason is not None:
                    if bad_images == "error":
                        raise DataError(f"unreadable image {path} ({reason}); {SKIP_HINT}")
                    self.skipped.append(path)
                    self.skip_reasons[path] = reason
                    continue
                self.samples.append((path, label))
        if not self.samples:
            raise DataError(f"image folder {root} holds no readable images")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        # A file that broke after the check (replaced, cut short by a copy still running) is named; with
        # bad_images = 'skip' it is left out from then on and the next readable image stands in for it,
        # so a long run does not die at a step for one file.
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"image {index} of {len(self.samples)}")  # ends iteration over the dataset
        for attempt in range(len(self.samples)):
            position = (index + attempt) % len(self.samples)
            if position in self.broken:
                continue
            path, label = self.samples[position]
            try:
                return {"pixel_values": self.transform(self._open(path)), "labels": label}
            except (OSError, SyntaxError, EOFError) as exc:  # PIL's errors for damaged data
                reason = f"unreadable image {path} ({exc or type(exc).__name__}); it was readable when the run started"
                if self.bad_images != "skip":
                    raise DataError(f"{reason}; {SKIP_HINT}") from None
                self.broken.add(position)
                self.skipped.append(path)
                self.skip_reasons[path] = str(exc) or type(exc).__name__
        raise DataError(f"no image of this dataset can be read any more (the last: {self.samples[index][0]})")

    def _open(self, path: Path) -> Any:
        from PIL import Image

        with Image.open(path) as image:
            image.load()  # decode here, so a damaged file fails inside the try, naming it
            return image.convert(self.image_mode)
