"""NS-LPIPS masks computed B sources per UNet call equal the batch-1 masks, and jobs sharing a results dir
share them (a mask another live job has claimed is waited for, not recomputed).

Tolerance. Batching changes only the order of fp32 sums inside the UNet's convolutions and matmuls
(≈1e-6 relative per call, docs/performance.md); the mask is the mean of 50 sequential inversion steps'
attention, so the maps may drift by at most ≈50·1e-6 relative: we allow 1e-4 of each item's map maximum.
That moves 255·map/max by at most 255·2e-4 ≈ 0.05 of a level, so the uint8 truncation flips a pixel of the
attention-resolution image by at most one level. PIL's bicubic upsampling (a = −0.5, taps summing to 1
with |weights| summing to ≤ 1.125) runs as two 8-bit passes, each rounding: one level in becomes at most
⌊1.125⌋ + 1 = 2 levels after the first pass and ⌊2·1.125⌋ + 1 = 3 after the second, so saved PNGs agree
within 3 levels (and are identical where the fg images are).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from metrics_helpers import save_features_state
from PIL import Image

from bench.images import to_pil
from bench.io import _host
from bench.metrics.ns_mask import (
    STYLEDIFFUSION_DDIM,
    MaskCache,
    MaskRequest,
    MaskSettings,
    attention_maps,
    blend_token_index,
    png_from_map,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MAP_RTOL = 1e-4  # of each item's map maximum (module docstring)
PNG_LEVELS = 3  # 8-bit levels after the bicubic upsampling (module docstring)
PROMPTS = ["a red circle on a blue background", "a green square on a gray background",
           "a blue triangle on a brown background"]
WORDS = ["circle", "square", "blue"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_pipe():
    """The committed toy-world model (trained: its attention follows the shapes), with StyleDiffusion's DDIM."""
    from bench.models import load_pipeline

    cfg = {"name": "toy-sd", "path": str(REPO_ROOT / "bench/toyworld/weights/toy-sd"), "local_files_only": True,
           "image_encoder": {"path": None, "subfolder": "image_encoder"}}
    return load_pipeline(cfg, STYLEDIFFUSION_DDIM)


def sources(source_image: torch.Tensor) -> torch.Tensor:
    """Three different 64² sources: the test image, mirrored, and with its channels rolled."""
    image = source_image[0]
    return torch.stack([image, image.flip(-1), image.roll(1, 0)])


def uint8_fg(token_map: torch.Tensor) -> np.ndarray:
    return (255 * token_map / token_map.max()).numpy().astype(np.uint8).astype(int)


def test_batched_masks_equal_batch_one(toy_pipe, source_image):
    images = sources(source_image)
    calls = Counter(toy_pipe.counter.forward_calls)
    batched = attention_maps(toy_pipe, images, PROMPTS)
    assert toy_pipe.counter.forward_calls - calls == {3: 50}  # one UNet call per step for all three items
    single = torch.stack([attention_maps(toy_pipe, images[i:i + 1], PROMPTS[i:i + 1])[0] for i in range(3)])
    assert batched.shape == single.shape == (3, 8, 8, 77)
    scale = single.amax(dim=(1, 2, 3), keepdim=True)
    assert ((batched - single).abs() <= MAP_RTOL * scale).all()
    # the items' maps differ far beyond the tolerance, so a mix-up of items (or of their heads) would fail
    for i in range(3):
        for j in range(i + 1, 3):
            assert (single[i] - single[j]).abs().max() > 100 * MAP_RTOL * scale.max()
    for i, (prompt, word) in enumerate(zip(PROMPTS, WORDS)):
        token = blend_token_index(prompt, word)
        fg_b, fg_1 = uint8_fg(batched[i, :, :, token]), uint8_fg(single[i, :, :, token])
        assert np.abs(fg_b - fg_1).max() <= 1
        png_b = np.asarray(png_from_map(batched[i, :, :, token], 64)).astype(int)
        png_1 = np.asarray(png_from_map(single[i, :, :, token], 64)).astype(int)  # = background_png at batch 1
        assert np.abs(png_b - png_1).max() <= (PNG_LEVELS if (fg_b != fg_1).any() else 0)


def requests(images: torch.Tensor, keys: list[str]) -> list[MaskRequest]:
    from bench.images import to_uint8

    return [MaskRequest(key, to_uint8(image), prompt, word) for key, image, prompt, word in
            zip(keys, images, PROMPTS, WORDS)]


def test_mask_cache_computes_missing_masks_in_one_batch_and_keeps_them(tmp_path, tiny_pipe, source_image):
    images = sources(source_image)
    cache = MaskCache(tmp_path / "masks", MaskSettings(resolution=32), batch_size=2)
    calls = Counter(tiny_pipe.counter.forward_calls)
    cache.ensure(tiny_pipe, requests(images, ["k0", "k1", "k2"]) + requests(images[:1], ["k0"]))
    assert tiny_pipe.counter.forward_calls - calls == {2: 50, 1: 50}  # 3 distinct masks, 2 per UNet call
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["k0.png", "k1.png", "k2.png"]
    assert cache.get("k2").shape == (1, 32, 32) and cache.computed == 3
    again = MaskCache(tmp_path / "masks", MaskSettings(resolution=32), batch_size=2)  # another job, later
    again.ensure(tiny_pipe, requests(images, ["k0", "k1", "k2"]))
    assert tiny_pipe.counter.forward_calls - calls == {2: 50, 1: 50} and again.computed == 0
    assert torch.equal(again.get("k1"), cache.get("k1"))


def test_a_mask_claimed_by_a_live_job_is_waited_for(tmp_path, tiny_pipe, source_image):
    """Another job (this pid, another claim token) holds k0 and writes it while we compute k1."""
    images = sources(source_image)
    directory = tmp_path / "masks"
    directory.mkdir()
    claim = directory / "k0.claim"
    claim.write_text(json.dumps({"host": _host(), "pid": os.getpid(), "token": "other job"}))
    theirs = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))

    def other_job() -> None:
        time.sleep(1.0)
        theirs.save(directory / "k0.png")
        claim.unlink()

    thread = threading.Thread(target=other_job)
    thread.start()
    cache = MaskCache(directory, MaskSettings(resolution=32), batch_size=8)
    calls = Counter(tiny_pipe.counter.forward_calls)
    cache.ensure(tiny_pipe, requests(images[:2], ["k0", "k1"]))
    thread.join()
    assert tiny_pipe.counter.forward_calls - calls == {1: 50} and cache.computed == 1  # only k1
    assert torch.allclose(cache.get("k0"), torch.full((1, 32, 32), 200 / 255 * 0.9999), atol=1e-6)  # theirs
    assert sorted(p.name for p in directory.iterdir()) == ["k0.png", "k1.png"]  # no claim left


def test_ns_lpips_sd_stage_computes_pending_masks_batched(tmp_path, tiny_pipe, source_image):
    """The metric stage's prepare: three sources' masks in one batched inversion, then scoring reads them."""
    from bench.metric_stage import score_results
    from bench.metrics.lpips_metrics import NsLpipsSd

    images = sources(source_image)
    results = tmp_path / "results"
    for i, image in enumerate(images):
        for name in (f"sources/s{i}.png", f"edits/m/e{i}.png"):
            (results / name).parent.mkdir(parents=True, exist_ok=True)
            to_pil(image).save(results / name)
        item = {"item_id": f"it{i}", "image_id": f"img{i}", "image_path": "x.png", "source_prompt": PROMPTS[i],
                "target_prompt": PROMPTS[i].replace(WORDS[i], "star"), "blend_words": [WORDS[i], "star"],
                "image_sha256": "0" * 64}
        (results / f"edits/m/e{i}.json").write_text(json.dumps({
            "key": f"e{i}", "status": "ok", "item": item, "method": {"label": "m"},
            "files": {"edited": f"edits/m/e{i}.png", "source": f"sources/s{i}.png"}}))
    alex = save_features_state(tmp_path / "alex.safetensors", "alexnet")
    metric = NsLpipsSd(backbone_path=str(alex), resolution=32, mask_batch_size=8)
    calls = Counter(tiny_pipe.counter.forward_calls)
    summary = score_results(results, [metric], pipe=tiny_pipe, batch_size=1)  # scored one by one, masks batched
    assert summary["scored"] == 3 and not summary["failures"]
    assert tiny_pipe.counter.forward_calls - calls == {3: 50}
    assert len(list((results / "masks" / "ns_lpips_sd").glob("*.png"))) == 3
