"""LPIPS family: ``lpips_alex``, ``lpips_vgg``, ``recon_lpips``, ``ns_lpips_gt``, ``ns_lpips_sd``.

Sources (docs/metrics.md#the-metrics):
- LPIPS (fidelity to source): ``lpips.LPIPS(net='alex')`` (and ``'vgg'``), inputs in [-1, 1]
  at the edit resolution, edited vs source.
- NS-LPIPS (sen-mao/StyleDiffusion@07b388a ``eval_metrics/ns_lpips.py`` L12-15, L35-43, L83-88): images and
  background mask resized to 256² and converted with ``ToTensor`` ([0, 1]); the soft mask is used
  (the ``>0.5`` threshold is computed and then overwritten); ``LPIPS(net='alex')(src·m, tgt·m)``
  on [0, 1] inputs without ``normalize=True``. The mask generation is in ``bench.metrics.ns_mask``.
- ``ns_lpips_gt`` is the cleaned variant of NS-LPIPS: binary ground-truth mask, [-1, 1] inputs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image

from bench.images import to_pil, to_uint8
from bench.metrics.backbones import LpipsBackbone, PipelineSource
from bench.metrics.base import Metric, MetricInput
from bench.metrics.common import NAN, is_reconstruction, pil_to_unit_tensor
from bench.metrics.ns_mask import BlendWordError, MaskCache, MaskRequest, MaskSettings, blend_token_index

log = logging.getLogger(__name__)


def _lpips_batch(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, device) -> list[float]:
    """lpips.LPIPS forward (normalize=False: inputs are passed through as given) → one float per pair."""
    with torch.no_grad():
        out = model(a.to(device), b.to(device))
    return [float(v) for v in out.reshape(-1).cpu()]


class LpipsDistance(Metric):
    """LPIPS(edited, source) with inputs in [-1, 1] at the edit resolution (lower = closer)."""

    id = "lpips_alex"
    unit = "LPIPS distance"
    version = "1"
    higher_is_better = False
    display_scale = 1.0

    def __init__(self, net: str = "alex", backbone_path: str | None = None, id: str | None = None):  # noqa: A002
        super().__init__(id or f"lpips_{net}")
        self.net = net
        self.lpips_backbone = LpipsBackbone(net=net, path=backbone_path, flavor="lpips")

    def backbones(self):
        return [self.lpips_backbone]

    def config(self) -> dict[str, Any]:
        return {"net": self.net, "inputs": "[-1,1]", "resolution": "edit"}

    def applies(self, inp: MetricInput) -> bool:
        return True

    def score(self, batch: list[MetricInput]) -> list[float]:
        values = [NAN] * len(batch)
        todo = [i for i, inp in enumerate(batch) if self.applies(inp)]
        if todo:
            model = self.load(self.lpips_backbone)
            src = torch.stack([batch[i].source.float() for i in todo])
            edt = torch.stack([batch[i].edited.float() for i in todo])
            for i, v in zip(todo, _lpips_batch(model, edt, src, self.device)):
                values[i] = v
        return values


class ReconLpips(LpipsDistance):
    """LPIPS-alex reconstruction fidelity: only for items whose target is the source (else NaN)."""

    id = "recon_lpips"

    def __init__(self, net: str = "alex", backbone_path: str | None = None, id: str | None = None):  # noqa: A002
        super().__init__(net=net, backbone_path=backbone_path, id=id or "recon_lpips")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "only": "reconstruction items (target prompt == source prompt)"}

    def applies(self, inp: MetricInput) -> bool:
        return is_reconstruction(inp)


def resize_pil_unit(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3,H,W) in [-1,1] → 8-bit PIL → ``Resize((size, size))`` (PIL bilinear, torchvision's default on
    PIL images) → ``ToTensor`` [0, 1]: StyleDiffusion's ``transform`` on the saved images."""
    pil = to_pil(image)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return pil_to_unit_tensor(pil)


class NsLpipsGt(Metric):
    """NS-LPIPS, cleaned: background = 1 − binary ground-truth edit mask; inputs in [-1, 1].

    Images are resized as in StyleDiffusion's protocol (PIL bilinear to ``resolution``²), the mask
    with nearest neighbour, thresholded at 0.5; LPIPS-alex(src·bg, edited·bg) on [-1, 1] inputs.
    NaN when the item has no mask or the background is empty.
    """

    id = "ns_lpips_gt"
    unit = "LPIPS distance"
    version = "1"
    higher_is_better = False
    display_scale = 1.0

    def __init__(self, backbone_path: str | None = None, resolution: int = 256, id: str | None = None):  # noqa: A002
        super().__init__(id)
        self.resolution = int(resolution)
        self.lpips_backbone = LpipsBackbone(net="alex", path=backbone_path, flavor="lpips")

    def backbones(self):
        return [self.lpips_backbone]

    def config(self) -> dict[str, Any]:
        return {"net": "alex", "inputs": "[-1,1]", "mask": "binary gt (>0.5)", "resolution": self.resolution}

    def background(self, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()[None, None]
        m = torch.nn.functional.interpolate(m, size=(self.resolution, self.resolution), mode="nearest")[0]
        return 1.0 - (m > 0.5).float()  # (1, R, R): 1 = background (kept region)

    def score(self, batch: list[MetricInput]) -> list[float]:
        values = [NAN] * len(batch)
        todo, srcs, edts = [], [], []
        for i, inp in enumerate(batch):
            if inp.mask is None:
                continue
            bg = self.background(inp.mask)
            if bg.sum() == 0:
                continue
            src = resize_pil_unit(inp.source, self.resolution) * 2 - 1
            edt = resize_pil_unit(inp.edited, self.resolution) * 2 - 1
            todo.append(i)
            srcs.append(src * bg)
            edts.append(edt * bg)
        if todo:
            model = self.load(self.lpips_backbone)
            for i, v in zip(todo, _lpips_batch(model, torch.stack(srcs), torch.stack(edts), self.device)):
                values[i] = v
        return values


class NsLpipsSd(Metric):
    """NS-LPIPS as StyleDiffusion computes it (soft attention background mask, [0, 1] inputs).

    mask = 1 − fg, fg = normalised cross-attention map of the first blend word, from a DDIM
    inversion of the source with the source prompt (see ``bench.metrics.ns_mask``); the mask is
    converted to grey with torchvision's ``Grayscale`` weights, as the reference does. Needs the
    diffusion pipeline, which the metric stage hands over in ``attach`` (with the folder where masks
    are kept as PNG, ``masks/<id>/``). ``prepare`` computes the masks of every pending input before
    scoring, ``mask_batch_size`` sources per UNet call, shared with concurrent jobs through claim files
    (``MaskCache.ensure``). NaN when the item has no blend words or the first blend word is not a word
    of the source prompt.
    """

    id = "ns_lpips_sd"
    unit = "LPIPS distance"
    version = "1"
    higher_is_better = False
    display_scale = 1.0

    def __init__(self, backbone_path: str | None = None, resolution: int = 256, num_inference_steps: int = 50,
                 attention_res_divisor: int = 4, mask_batch_size: int = 8, id: str | None = None):  # noqa: A002
        super().__init__(id)
        self.resolution = int(resolution)
        self.num_inference_steps = int(num_inference_steps)
        self.attention_res_divisor = int(attention_res_divisor)
        self.lpips_backbone = LpipsBackbone(net="alex", path=backbone_path, flavor="lpips")
        self.pipeline = PipelineSource()
        settings = MaskSettings(self.resolution, self.num_inference_steps, self.attention_res_divisor)
        # in memory until attach gives the results folder; the batch size is not a value-changing setting
        self.masks = MaskCache(None, settings, int(mask_batch_size))

    def backbones(self):
        return [self.lpips_backbone]

    def attach(self, results_dir: Path, pipeline: PipelineSource) -> None:
        self.pipeline = pipeline
        self.masks = MaskCache(Path(results_dir) / "masks" / self.id, self.masks.settings, self.masks.batch_size)

    @property
    def backbone(self) -> str | None:
        """LPIPS weights + the diffusion pipeline's identity (loads the pipeline when given a loader)."""
        return f"{super().backbone}+{self.pipeline.identity}"

    def config(self) -> dict[str, Any]:
        return {"net": "alex", "inputs": "[0,1] (no normalize)", "mask": "soft 1 - cross-attention (StyleDiffusion)",
                "resolution": self.resolution, "ddim_steps": self.num_inference_steps,
                "attention_res": f"latent/{self.attention_res_divisor}"}

    @staticmethod
    def has_blend_word(inp: MetricInput) -> bool:
        return bool(inp.item.blend_words and inp.item.blend_words[0])

    def mask_request(self, pipe, inp: MetricInput) -> MaskRequest:
        """The background mask this input needs; ``BlendWordError`` when its blend word is not a word of
        the source prompt."""
        prompt, word = inp.item.source_prompt, inp.item.blend_words[0]
        blend_token_index(prompt, word)
        source = to_uint8(inp.source)
        source_sha256 = inp.record.get("_source_sha256") or hashlib.sha256(source.numpy().tobytes()).hexdigest()
        return MaskRequest(self.masks.key(pipe, source_sha256, prompt, word, self.config()), source, prompt, word)

    def prepare(self, inputs: Iterable[MetricInput]) -> None:
        """Compute the missing masks of ``inputs`` (the metric stage passes all pending ones) in batched calls;
        items without a usable blend word are left to ``score`` (NaN, reported there)."""
        pipe, requests = None, []
        for inp in inputs:
            if not self.has_blend_word(inp):
                continue
            pipe = pipe or self.pipeline.get()
            try:
                requests.append(self.mask_request(pipe, inp))
            except BlendWordError:
                continue
        if requests:
            self.masks.ensure(pipe, requests)

    def background_mask(self, inp: MetricInput) -> torch.Tensor:
        """(1, R, R) soft background mask in [0, 1] for this input's source image and prompt."""
        pipe = self.pipeline.get()
        request = self.mask_request(pipe, inp)
        self.masks.ensure(pipe, [request])  # nothing to do after prepare
        return self.masks.get(request.key)

    def score(self, batch: list[MetricInput]) -> list[float]:
        values = [NAN] * len(batch)
        self.prepare(batch)  # the batch's missing masks in batched calls (none after the stage's prepare)
        todo, srcs, edts = [], [], []
        for i, inp in enumerate(batch):
            if not self.has_blend_word(inp):
                continue
            try:
                mask = self.background_mask(inp)  # (1, R, R) grey, broadcast over RGB like `.repeat(3,1,1)`
            except BlendWordError as err:  # a data problem of this item only: NaN, reported
                log.warning("%s: item %s: %s", self.id, inp.item.item_id, err)
                continue
            todo.append(i)
            srcs.append(resize_pil_unit(inp.source, self.resolution) * mask)
            edts.append(resize_pil_unit(inp.edited, self.resolution) * mask)
        if todo:
            model = self.load(self.lpips_backbone)
            for i, v in zip(todo, _lpips_batch(model, torch.stack(srcs), torch.stack(edts), self.device)):
                values[i] = v
        return values
