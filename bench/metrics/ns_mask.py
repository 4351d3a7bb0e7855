"""StyleDiffusion's NS-LPIPS background mask (``sen-mao/StyleDiffusion`` ``eval_metrics/storemask.py``).

Source: sen-mao/StyleDiffusion@07b388a ``eval_metrics/storemask.py`` L15-22, L118-135, L219-228
(docs/metrics.md#quirks-reproduced-on-purpose). Steps reproduced:

1. Hand-built DDIM (SD betas, ``set_alpha_to_one=False``, ``steps_offset`` 0), 50 steps.
2. DDIM-invert the source latent (VAE posterior mean × scaling factor) with the *source* prompt,
   conditional branch only (w = 1), while ``methods.p2p.AttentionStore`` records attention.
3. Cross-attention maps of the "up" and "down" blocks at 16² for SD's 64² latent — here the UNet's
   attention resolution for latent_size/4 (``sd_equivalent_resolution``, rounded up to a resolution
   the UNet has attention at) — averaged over steps, layers and heads. Quirk reproduced: the
   reference's controller runs with ``LOW_RESOURCE=False`` and a batch-1 conditional pass, so it
   stores ``attn[h // 2:]`` = only the **second half of the heads** of each layer.
4. Token of the first blend word at ``prompt.split(' ').index(word) + 1`` (assumes one token per
   word, as the reference does).
5. fg = uint8(255·map / max(map)) (truncation), as a 3-channel image resized to 256² with PIL's
   default ``resize`` filter (bicubic); bg = 255 − fg is the saved mask PNG.
6. The metric reads it back: ``Resize((256, 256))`` + ``ToTensor`` + torchvision ``Grayscale``.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.hashing import content_key
from bench.io import write_bytes
from bench.metrics.common import pil_to_unit_tensor

log = logging.getLogger(__name__)

MASK_VERSION = "1"
# storemask.py L15: DDIMScheduler(beta_start=0.00085, beta_end=0.012, "scaled_linear", clip_sample=False,
# set_alpha_to_one=False) → diffusers' default steps_offset=0
STYLEDIFFUSION_DDIM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                           clip_sample=False, set_alpha_to_one=False, steps_offset=0, prediction_type="epsilon")


class BlendWordError(ValueError):
    """The blend word is not a word of the source prompt (the reference would raise too)."""


def blend_token_index(prompt: str, word: str) -> int:
    """The reference's token position: index of the word in prompt.split(' ') + 1 (BOS at 0)."""
    first = word.split(" ")[0]
    words = prompt.split(" ")
    if first not in words:
        raise BlendWordError(f"blend word {first!r} is not a word of the source prompt {prompt!r} (words: {words})")
    return words.index(first) + 1


@torch.no_grad()
def attention_map(pipe, source: torch.Tensor, prompt: str, num_inference_steps: int = 50,
                  attention_res_divisor: int = 4) -> torch.Tensor:
    """(res, res, 77) cross-attention of the DDIM inversion of ``source`` ((3,H,W) in [-1,1]) under ``prompt``."""
    from bench.models import build_scheduler
    from methods.p2p import AttentionStore, attention_control, sd_equivalent_resolution
    from methods.steps import ddim_inversion_loop

    scheduler = build_scheduler(STYLEDIFFUSION_DDIM)
    scheduler.set_timesteps(num_inference_steps)
    # the shared inversion loop with this hand-built scheduler (the pipeline's own may differ)
    runner = SimpleNamespace(scheduler=scheduler, unet_eps=pipe.unet_eps)
    x0 = pipe.encode_image(source[None])
    cond = pipe.encode_prompts([prompt])
    store = AttentionStore(num_branches=1, places=("down", "up"), max_resolution=None, record_self=False)
    with attention_control(pipe.unet, store):
        ddim_inversion_loop(runner, x0, cond, cond, 1.0, on_step=store.step_callback)
    res = sd_equivalent_resolution(pipe.unet, 64 // attention_res_divisor)
    maps = store.maps("cross", ("up", "down"), res)
    heads = {int(m.shape[1]) for m in maps}
    if len(heads) != 1:
        raise ValueError(f"cross-attention layers at {res}² have different head counts {sorted(heads)}")
    h = heads.pop()
    return store.aggregate_cross_attention(res, places=("up", "down"), branch=0,
                                           heads=list(range(h // 2, h))).float().cpu()


def background_png(pipe, source: torch.Tensor, prompt: str, word: str, resolution: int = 256,
                   num_inference_steps: int = 50, attention_res_divisor: int = 4) -> Image.Image:
    """The 8-bit RGB background mask image the reference saves (bg = 255 − fg)."""
    index = blend_token_index(prompt, word)  # fails before the inversion when the word is absent
    maps = attention_map(pipe, source, prompt, num_inference_steps, attention_res_divisor)
    image = maps[:, :, index]
    image = 255 * image / image.max()
    fg = image.unsqueeze(-1).expand(*image.shape, 3).numpy().astype(np.uint8)
    fg = np.array(Image.fromarray(fg).resize((resolution, resolution), Image.BICUBIC))
    return Image.fromarray((255 - fg).astype(np.uint8))


def mask_from_png(image: Image.Image, resolution: int = 256) -> torch.Tensor:
    """(1, R, R) soft background mask as ns_lpips.py reads it: RGB, Resize((R, R)), ToTensor, Grayscale."""
    import torchvision.transforms.functional as TF

    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BILINEAR)
    return TF.rgb_to_grayscale(pil_to_unit_tensor(image), num_output_channels=1)


def stylediffusion_background_mask(pipe, source: torch.Tensor, prompt: str, word: str, resolution: int = 256,
                                   num_inference_steps: int = 50, attention_res_divisor: int = 4) -> torch.Tensor:
    """(1, R, R) soft background mask in [0, 1] (what ``ns_lpips_sd`` multiplies the images by)."""
    png = background_png(pipe, source, prompt, word, resolution, num_inference_steps, attention_res_divisor)
    return mask_from_png(png, resolution)


class MaskCache:
    """Background masks saved as 8-bit PNG (what the reference saves) under ``directory/<key>.png``, so
    each source is inverted once for every method and run. The key is the content hash of the source
    image, prompt, blend word, pipeline identity, the scoring metric's config and ``MASK_VERSION``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._memory: dict[str, torch.Tensor] = {}

    def get(self, pipe, source: torch.Tensor, source_sha256: str, prompt: str, word: str, config: dict[str, Any],
            resolution: int = 256, num_inference_steps: int = 50, attention_res_divisor: int = 4) -> torch.Tensor:
        """(1, R, R) soft background mask of ``source`` ((3, H, W) in [-1, 1]) under ``prompt``."""
        key = content_key({"source_sha256": source_sha256, "prompt": prompt, "word": word, "model": pipe.identity(),
                           "config": config, "mask_version": MASK_VERSION})
        if key not in self._memory:
            path = self.directory / f"{key}.png"
            if not path.is_file():
                png = background_png(pipe, source, prompt, word, resolution, num_inference_steps, attention_res_divisor)
                buffer = io.BytesIO()
                png.save(buffer, format="PNG")
                write_bytes(path, buffer.getvalue())
            self._memory[key] = mask_from_png(Image.open(path), resolution)
        return self._memory[key]
