"""The content keys of the edit stage (``bench.hashing``): what makes two results the same result.

- inversion key: model identity, scheduler config, method name/version/*inversion* hparams, image
  sha256, source prompt, preprocessing, resolution (+ seed for stochastic methods);
- edit key: the inversion key + all hparams + the item identity (dataset, item id, prompts, blend
  words, extra) + seed;
- early failure key: a failure before the image could be read has no image sha: every other part
  of the edit key, so sweep points and models never share (overwrite) one.

Paths never enter a key.
"""

from __future__ import annotations

from typing import Any

from bench.data.item import EditItem
from bench.data.preprocess import PREPROCESS_ID
from bench.hashing import content_key
from bench.models import EditPipeline
from methods.base import Method


def inversion_key(pipe: EditPipeline, scheduler_cfg: dict, method: Method, image_sha: str, source_prompt: str,
                  seed: int) -> str:
    return content_key({
        "kind": "inversion", "model": pipe.identity(), "scheduler": scheduler_cfg,
        "method": {"name": method.name, "version": method.version, "hparams": method.inversion_hparams()},
        "image_sha256": image_sha, "source_prompt": source_prompt, "preprocess": PREPROCESS_ID,
        "resolution": pipe.resolution, "seed": seed if method.stochastic else None,
    })


def item_identity(item: EditItem) -> dict[str, Any]:
    """The item as it enters a key. Paths never do (the same item checked out elsewhere must give the same
    keys, seeds and results): the image's content enters through its sha256, and ``extra`` entries named
    ``*_path`` (e.g. the toy world's ``union_mask_path``) point at files derived from the item itself."""
    identity = item.describe()
    for path_field in ("image_path", "mask_path", "target_image_path"):
        identity.pop(path_field)
    identity["extra"] = {k: v for k, v in (identity.get("extra") or {}).items() if not k.endswith("_path")}
    return identity


def edit_key(inv_key: str, method: Method, dataset_name: str, item: EditItem, seed: int) -> str:
    return content_key({
        "kind": "edit", "inversion_key": inv_key,
        "method": {"name": method.name, "version": method.version, "hparams": method.hparams()},
        "dataset": dataset_name, "item": item_identity(item), "seed": seed,
    })


def early_failure_key(pipe: EditPipeline, method: Method, dataset_name: str, item: EditItem, seed: int) -> str:
    """The key of a failure that happens before the image is read (no image sha, so no edit key yet):
    everything else of the edit key, so two sweep points or two models never share it."""
    return content_key({
        "kind": "failed-before-key", "model": pipe.identity(),
        "method": {"name": method.name, "version": method.version, "hparams": method.hparams()},
        "dataset": dataset_name, "item": item_identity(item), "seed": seed,
    })
