"""Image tensor conversions and PSNR shared by the runner, the metrics and the toy world.

Images are float tensors in [-1, 1], (3, H, W) or with leading batch dimensions; 8-bit conversions
round half to even, as the PNG writer of the runner does, so ``to_uint8`` of a loaded PNG gives its bytes.
"""

from __future__ import annotations

import torch
from PIL import Image


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → uint8 of the same shape: round((x + 1)·127.5) after clamping."""
    return ((image.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def to_pil(image: torch.Tensor, truncate: bool = False) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) tensor in [-1, 1] → 8-bit RGB PIL image (round half to even).

    ``truncate=True`` converts as every reference saves its edits, uint8((x/2 + 0.5).clamp(0, 1)·255)
    (truncation; inbarhub/DDPM_inversion@50c3ae9 prompt_to_prompt/ptp_utils.py:91-93), for decoded images
    that are then scored."""
    if image.dim() == 4:
        image = image[0]
    if truncate:
        image = image.detach().float().cpu()
        array = ((image / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    else:
        array = to_uint8(image)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def psnr(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None,
         max_db: float | None = None) -> torch.Tensor:
    """PSNR (dB) of [-1, 1] images (peak-to-peak range 2) per image: (..., C, H, W) → (...).

    MSE over C, H, W, or over the pixels where ``weight`` (..., H, W) is 1 (NaN where it is all 0);
    identical images give inf, or ``max_db`` when given (a cap keeps means over items finite).
    10·log10(2² / MSE) equals the [0, 1]-scale 10·log10(1 / MSE₀₁).
    """
    diff2 = (a.float() - b.float()) ** 2
    if weight is None:
        mse = diff2.mean(dim=(-3, -2, -1))
    else:
        w = weight.float().unsqueeze(-3)
        mse = (diff2 * w).sum(dim=(-3, -2, -1)) / (w.sum(dim=(-3, -2, -1)) * diff2.shape[-3])
    value = 10 * torch.log10(4.0 / mse)
    return value if max_db is None else value.clamp(max=max_db)
