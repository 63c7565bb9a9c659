"""Any picked image made into what the digits demo's model was trained on.

scikit-learn's digits are 8×8 grids of ink counts (0..16, scaled to [0, 1] by the data): light
ink on a dark ground, the digit filling the grid's height and centred across it.  A user's
picture is usually dark ink on white paper, at any size, with margins: it is turned to grayscale,
inverted when its border is light, cropped to the ink, padded square (centred), averaged down to
8×8 (each cell the share of ink it covers, as the counts are) and scaled so its darkest cell is 1.
An 8×8 picture is taken as it is (only inverted when it is dark on light).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

DIGITS_SIZE = 8
_INK_THRESHOLD = 0.5  # a pixel with at least half the strongest ink belongs to the digit's bounding box


def digits_image_transform(image) -> torch.Tensor:
    """A PIL image (any mode, any size) as the digits model's ``[1, 8, 8]`` float input in [0, 1]."""
    width, height = image.size
    gray = torch.frombuffer(bytearray(image.convert("L").tobytes()), dtype=torch.uint8).view(height, width)
    gray = gray.float() / 255.0  # no torchvision: nothing imported lazily on the window's worker thread
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = 1.0 - gray if float(border.median()) > 0.5 else gray  # the data's ink is light on dark
    if tuple(ink.shape) != (DIGITS_SIZE, DIGITS_SIZE):
        ink = _fit_to_grid(ink)
    top = float(ink.max())
    return (ink / top if top > 0 else ink).clamp(0, 1).unsqueeze(0).contiguous()


def _fit_to_grid(ink: torch.Tensor) -> torch.Tensor:
    strong = ink >= _INK_THRESHOLD * float(ink.max()) if float(ink.max()) > 0.05 else None
    if strong is None or not bool(strong.any()):  # a blank picture: nothing to centre
        return F.interpolate(ink[None, None], size=(DIGITS_SIZE, DIGITS_SIZE), mode="area")[0, 0]
    rows = torch.nonzero(strong.any(1)).flatten()
    cols = torch.nonzero(strong.any(0)).flatten()
    crop = ink[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
    height, width = crop.shape
    side = max(height, width)
    square = torch.zeros(side, side)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = crop
    if side < DIGITS_SIZE:  # a tiny crop: blow it up instead of averaging
        return F.interpolate(square[None, None], size=(DIGITS_SIZE, DIGITS_SIZE), mode="nearest")[0, 0]
    return F.interpolate(square[None, None], size=(DIGITS_SIZE, DIGITS_SIZE), mode="area")[0, 0]
