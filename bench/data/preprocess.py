"""Image preprocessing identical to the reference implementations (one place for all methods).

References (`load_512` in prompt-to-prompt / EF-DDPM / StyleDiffusion): RGB, centre-crop to a
square, PIL resize to the model resolution (bicubic, Pillow's default for RGB), scale to [-1, 1].
``PREPROCESS_ID`` names this recipe; it is part of every item hash. 16-bit grayscale files (Pillow
modes ``I;16*``/``I``) are scaled by value range (v/257 → 8 bit) before the RGB conversion (a plain
``convert("RGB")`` clips them to white); float images (mode ``F``) are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bench.data.item import ItemError
from bench.fingerprint import file_sha256

# v2: 16-bit grayscale scaled by range (v1 clipped it to white)
PREPROCESS_ID = "center_crop_square+resize_bicubic+[-1,1]/v2"


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """Open an image file fully, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ItemError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ItemError(f"{what} file is not a readable image: {path} ({err})") from err


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(image: Image.Image, what: str = "image") -> Image.Image:
    """16-bit grayscale → 8-bit grayscale by value range (0..65535 → 0..255); other modes unchanged.

    Pillow's ``convert("RGB")`` clips 16-bit values above 255 to white; a float image has no defined
    range, so it is refused rather than guessed."""
    if image.mode == "F":
        raise ItemError(f"{what} has floating-point pixels (Pillow mode 'F'); expected 8- or 16-bit integers")
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    array = np.asarray(image, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ItemError(f"{what}: integer pixels in [{array.min()}, {array.max()}] (Pillow mode {image.mode!r}); "
                        "expected 16-bit values in [0, 65535]")
    return Image.fromarray(np.round(array / 257.0).astype(np.uint8))  # 2-D uint8 → mode "L"


def center_crop_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def preprocess(image: Image.Image, resolution: int) -> torch.Tensor:
    """PIL image → (1, 3, R, R) float32 tensor in [-1, 1]."""
    image = center_crop_square(to_8bit(image).convert("RGB"))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def preprocess_mask(image: Image.Image, resolution: int) -> torch.Tensor:
    """Mask image → (R, R) float32 in [0, 1] (same crop; nearest resize keeps binary masks binary)."""
    image = center_crop_square(to_8bit(image, "mask").convert("L"))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.NEAREST)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def load_image_tensor(path: str | Path, resolution: int) -> tuple[torch.Tensor, str]:
    """Load and preprocess an image file; returns (tensor (1,3,R,R) in [-1,1], sha256 of the file)."""
    image = to_8bit(open_image(path), f"image file {path}")
    return preprocess(image, resolution), file_sha256(path)


def from_pil(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image → (3, H, W) tensor in [-1, 1] (no crop, no resize)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
