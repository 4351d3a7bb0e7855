"""Image preprocessing identical to the reference implementations (one place for all methods).

References (`load_512` in prompt-to-prompt / EF-DDPM / StyleDiffusion): RGB, centre-crop to a
square, PIL resize to the model resolution (bicubic, Pillow's default for RGB), scale to [-1, 1].
``PREPROCESS_ID`` names this recipe; it is part of every item hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bench.data.item import ItemError

PREPROCESS_ID = "center_crop_square+resize_bicubic+[-1,1]/v1"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def center_crop_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def preprocess(image: Image.Image, resolution: int) -> torch.Tensor:
    """PIL image → (1, 3, R, R) float32 tensor in [-1, 1]."""
    image = center_crop_square(image.convert("RGB"))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def preprocess_mask(image: Image.Image, resolution: int) -> torch.Tensor:
    """Mask image → (R, R) float32 in [0, 1] (same crop; nearest resize keeps binary masks binary)."""
    image = center_crop_square(image.convert("L"))
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.NEAREST)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def load_image_tensor(path: str | Path, resolution: int) -> tuple[torch.Tensor, str]:
    """Load and preprocess an image file; returns (tensor (1,3,R,R) in [-1,1], sha256 of the file)."""
    image = open_image(path)
    return preprocess(image, resolution), file_sha256(path)


def to_pil(image: torch.Tensor, truncate: bool = False) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) tensor in [-1, 1] → 8-bit RGB PIL image (round-half-to-even).

    ``truncate=True`` converts as every reference saves its edits, uint8((x/2 + 0.5).clamp(0, 1)·255) (truncation;
    inbarhub/DDPM_inversion@50c3ae9 prompt_to_prompt/ptp_utils.py:91-93), for decoded images that are then scored."""
    if image.dim() == 4:
        image = image[0]
    image = image.detach().float().cpu()
    if truncate:
        return Image.fromarray(((image / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy())
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image → (3, H, W) tensor in [-1, 1] (no crop, no resize)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
