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

Not the reference's: ``MaskCache.ensure`` inverts up to B sources per UNet call (one ``AttentionStore``
branch per source, the head quirk per source) and shares the work with concurrent jobs through claim
files (``bench.claims``); masks equal the batch-1 ones up to float rounding (docs/metrics.md).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from bench.claims import ClaimDir, compute_claimed
from bench.hashing import content_key
from bench.io import write_bytes
from bench.metrics.common import pil_to_unit_tensor

log = logging.getLogger(__name__)

MASK_VERSION = "1"
# storemask.py L15: DDIMScheduler(beta_start=0.00085, beta_end=0.012, "scaled_linear", clip_sample=False,
# set_alpha_to_one=False) → diffusers' default steps_offset=0
STYLEDIFFUSION_DDIM = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                           clip_sample=False, set_alpha_to_one=False, steps_offset=0, prediction_type="epsilon")


@dataclass(frozen=True)
class MaskSettings:
    """What shapes a mask: saved PNG size R, DDIM steps, attention resolution = SD's latent/divisor."""

    resolution: int = 256
    num_inference_steps: int = 50
    attention_res_divisor: int = 4


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
def attention_maps(pipe, sources: torch.Tensor, prompts: Sequence[str], num_inference_steps: int = 50,
                   attention_res_divisor: int = 4) -> torch.Tensor:
    """(B, res, res, 77) cross-attention of the DDIM inversions of ``sources`` ((B,3,H,W) in [-1,1]), item b
    under ``prompts[b]``: one UNet call per step carries all B items (one store branch per item)."""
    from bench.models import build_scheduler
    from methods.p2p import AttentionStore, attention_control, sd_equivalent_resolution
    from methods.steps import ddim_inversion_loop

    if sources.shape[0] != len(prompts):
        raise ValueError(f"attention_maps: {sources.shape[0]} sources for {len(prompts)} prompts")
    scheduler = build_scheduler(STYLEDIFFUSION_DDIM)
    scheduler.set_timesteps(num_inference_steps)
    # the shared inversion loop with this hand-built scheduler (the pipeline's own may differ)
    runner = SimpleNamespace(scheduler=scheduler, unet_eps=pipe.unet_eps)
    x0 = pipe.encode_image(sources)
    cond = pipe.encode_prompts(list(prompts))
    store = AttentionStore(num_branches=len(prompts), places=("down", "up"), max_resolution=None, record_self=False)
    with attention_control(pipe.unet, store):
        ddim_inversion_loop(runner, x0, cond, cond, 1.0, on_step=store.step_callback)
    res = sd_equivalent_resolution(pipe.unet, 64 // attention_res_divisor)
    heads = {int(m.shape[1]) for m in store.maps("cross", ("up", "down"), res)}
    if len(heads) != 1:
        raise ValueError(f"cross-attention layers at {res}² have different head counts {sorted(heads)}")
    h = heads.pop()
    # the reference's batch-1 quirk, per item: heads h//2..h of each item's own rows
    return torch.stack([store.aggregate_cross_attention(res, places=("up", "down"), branch=b,
                                                        heads=list(range(h // 2, h)))
                        for b in range(len(prompts))]).float().cpu()


def attention_map(pipe, source: torch.Tensor, prompt: str, num_inference_steps: int = 50,
                  attention_res_divisor: int = 4) -> torch.Tensor:
    """(res, res, 77) cross-attention of the DDIM inversion of ``source`` ((3,H,W) in [-1,1]) under ``prompt``."""
    return attention_maps(pipe, source[None], [prompt], num_inference_steps, attention_res_divisor)[0]


def png_from_map(token_map: torch.Tensor, resolution: int = 256) -> Image.Image:
    """(res, res) attention of the blend token → the 8-bit RGB background image the reference saves."""
    image = 255 * token_map / token_map.max()
    fg = image.unsqueeze(-1).expand(*image.shape, 3).numpy().astype(np.uint8)
    fg = np.array(Image.fromarray(fg).resize((resolution, resolution), Image.BICUBIC))
    return Image.fromarray((255 - fg).astype(np.uint8))


def background_png(pipe, source: torch.Tensor, prompt: str, word: str, resolution: int = 256,
                   num_inference_steps: int = 50, attention_res_divisor: int = 4) -> Image.Image:
    """The 8-bit RGB background mask image the reference saves (bg = 255 − fg), one source."""
    index = blend_token_index(prompt, word)  # fails before the inversion when the word is absent
    maps = attention_map(pipe, source, prompt, num_inference_steps, attention_res_divisor)
    return png_from_map(maps[:, :, index], resolution)


def background_pngs(pipe, sources: torch.Tensor, prompts: Sequence[str], words: Sequence[str],
                    settings: MaskSettings) -> list[Image.Image]:
    """``background_png`` of B same-sized sources ((B,3,H,W)) with their inversions in one batch."""
    indices = [blend_token_index(prompt, word) for prompt, word in zip(prompts, words, strict=True)]
    maps = attention_maps(pipe, sources, prompts, settings.num_inference_steps, settings.attention_res_divisor)
    return [png_from_map(m[:, :, index], settings.resolution) for m, index in zip(maps, indices)]


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


@dataclass(frozen=True)
class MaskRequest:
    """One mask to have: its cache key, the source as 8-bit (3, H, W) (exactly what the stage reads from
    the source PNG, 4× smaller than floats while requests wait), prompt and blend word."""

    key: str
    source_uint8: torch.Tensor
    prompt: str
    word: str

    def source(self) -> torch.Tensor:
        return self.source_uint8.float() / 127.5 - 1.0  # = bench.data.preprocess.from_pil of the PNG


class MaskCache:
    """Background masks saved as 8-bit PNG (what the reference saves) under ``directory/<key>.png``, so
    each source is inverted once for every method, run and job sharing the results directory
    (``directory=None``: kept in memory only). The key is the content hash of the source image, prompt,
    blend word, pipeline identity, the scoring metric's config and ``MASK_VERSION``; the batch size is
    not in it (a batched mask equals the batch-1 one up to float rounding, see docs/metrics.md)."""

    def __init__(self, directory: str | Path | None, settings: MaskSettings | None = None,
                 batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"MaskCache batch_size={batch_size}: expected at least 1 source per UNet call")
        self.directory = Path(directory) if directory is not None else None
        self.settings = settings or MaskSettings()
        self.batch_size = int(batch_size)
        self.claims = ClaimDir(self.directory) if self.directory is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self.computed = 0  # masks this object computed (the rest were read or computed by another job)

    @staticmethod
    def key(pipe, source_sha256: str, prompt: str, word: str, config: dict[str, Any]) -> str:
        return content_key({"source_sha256": source_sha256, "prompt": prompt, "word": word, "model": pipe.identity(),
                            "config": config, "mask_version": MASK_VERSION})

    def _png_path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.png"

    def has(self, key: str) -> bool:
        return key in self._memory or (self.directory is not None and self._png_path(key).is_file())

    def ensure(self, pipe, requests: Iterable[MaskRequest]) -> None:
        """Compute every requested mask not yet cached, ``batch_size`` sources per UNet call; with a
        directory, claim them in chunks of ``batch_size`` (``bench.claims``) so that jobs sharing it split
        the work and wait for each other's masks instead of recomputing them."""
        missing: dict[str, MaskRequest] = {}
        for request in requests:
            if request.key not in missing and not self.has(request.key):
                missing[request.key] = request
        if not missing:
            return
        start, before = time.perf_counter(), self.computed
        if self.claims is None:
            keys = list(missing)
            for i in range(0, len(keys), self.batch_size):
                self._compute(pipe, [missing[key] for key in keys[i:i + self.batch_size]])
        else:
            compute_claimed(self.claims, list(missing), self.has,
                            lambda keys: self._compute(pipe, [missing[key] for key in keys]), self.batch_size)
        log.info("NS-LPIPS masks: %d missing, %d computed here at up to %d per UNet call, %.1f s",
                 len(missing), self.computed - before, self.batch_size, time.perf_counter() - start)

    def _compute(self, pipe, requests: list[MaskRequest]) -> None:
        """Batched inversions, one batch per source size; PNGs written atomically (or kept in memory)."""
        by_shape: dict[tuple, list[MaskRequest]] = {}
        for request in requests:
            by_shape.setdefault(tuple(request.source_uint8.shape), []).append(request)
        for group in by_shape.values():
            pngs = background_pngs(pipe, torch.stack([r.source() for r in group]), [r.prompt for r in group],
                                   [r.word for r in group], self.settings)
            for request, png in zip(group, pngs):
                if self.directory is None:
                    self._memory[request.key] = mask_from_png(png, self.settings.resolution)
                else:
                    buffer = io.BytesIO()
                    png.save(buffer, format="PNG")
                    write_bytes(self._png_path(request.key), buffer.getvalue())
            self.computed += len(group)

    def get(self, key: str) -> torch.Tensor:
        """(1, R, R) soft background mask of a key ``ensure`` has made available."""
        if key not in self._memory:
            if self.directory is None or not self._png_path(key).is_file():
                raise KeyError(f"NS-LPIPS mask {key} is not computed (MaskCache.ensure first); "
                               f"directory: {self.directory}")
            self._memory[key] = mask_from_png(Image.open(self._png_path(key)), self.settings.resolution)
        return self._memory[key]
