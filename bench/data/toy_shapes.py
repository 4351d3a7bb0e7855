"""``dataset=toy_shapes``: the fixed, held-out toy-world edit suite with ground truth.

48 items (``per_category`` = 16 each of colour, shape and background edits), one source scene per
item, drawn from the seed namespace ``SUITE_NAMESPACE`` (training renders use other namespaces, see
``bench.toyworld.train``). On first use every item is rendered into ``root/v<version>-seed<seed>/``:

    <image_id>/source.png      the source image (64×64 RGB)
    <image_id>/target.png      the pixel-exact edited image (same geometry, texture, jitter)
    <image_id>/mask.png        the edit region (white = changed): the shape for colour edits, the
                               union of both shapes for shape edits, the background for background edits
    <image_id>/union.png       the union of the source and target shape masks

Files are written atomically and are byte-identical on every machine (deterministic numpy + PNG), so
item identities (content hashes) are stable.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from bench.data.base import Dataset, check_unique_ids
from bench.data.item import EditItem
from bench.io import write_bytes
from bench.toyworld.generator import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    random_edit_value,
    render_edit,
    rng_from,
    sample_scenes,
)

SUITE_NAMESPACE = 3


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def _mask_u8(mask: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)


def suite_edits(seed: int = 0, per_category: int = 16):
    """[(image_id, category, Edit)] of the suite: a pure function of (seed, per_category)."""
    scenes = sample_scenes((seed, SUITE_NAMESPACE), per_category * len(ATTRIBUTES))
    rng = rng_from((seed, SUITE_NAMESPACE, 1))
    edits = []
    for index in range(len(scenes)):
        category = ATTRIBUTES[index // per_category]
        scene = scenes[index]
        new_value = random_edit_value(rng, category, int(scene.attribute(category)[0]))
        edits.append((f"toy{index:02d}", category, render_edit(scene, category, new_value)))
    return edits


class ToyShapes(Dataset):
    """The toy shapes edit suite (see module docstring)."""

    name = "toy_shapes"
    version = "1"

    def __init__(self, root: str, seed: int = 0, per_category: int = 16):
        if per_category < 1:
            raise ValueError(f"toy_shapes: per_category={per_category}; expected >= 1")
        self.root = Path(root)
        self.seed = int(seed)
        self.per_category = int(per_category)

    @property
    def directory(self) -> Path:
        suffix = "" if self.per_category == 16 else f"-n{self.per_category}"
        return self.root / f"v{self.version}-seed{self.seed}{suffix}"

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "seed": self.seed, "per_category": self.per_category}

    def items(self) -> list[EditItem]:
        items = []
        for image_id, category, edit in suite_edits(self.seed, self.per_category):
            folder = self.directory / image_id
            files = {"source": edit.source, "target": edit.target, "mask": _mask_u8(edit.edit_mask),
                     "union": _mask_u8(edit.union_alpha)}
            paths = {name: folder / f"{name}.png" for name in files}
            for name, array in files.items():
                if not paths[name].is_file():  # render on first use (atomic; identical bytes if raced)
                    write_bytes(paths[name], _png_bytes(array))
            source_attrs = dict(zip(ATTRIBUTES, _attributes(edit.source_prompt)))
            target_attrs = dict(zip(ATTRIBUTES, _attributes(edit.target_prompt)))
            items.append(EditItem(
                item_id=f"{image_id}/{category}", image_id=image_id, image_path=str(paths["source"]),
                source_prompt=edit.source_prompt, target_prompt=edit.target_prompt,
                blend_words=(edit.source_value, edit.target_value), edit_category=category,
                mask_path=str(paths["mask"]), target_image_path=str(paths["target"]),
                extra={"union_mask_path": str(paths["union"]), "edited_attribute": category,
                       "source_attributes": source_attrs, "target_attributes": target_attrs},
            ))
        return check_unique_ids(items, self.name)


def _attributes(prompt: str) -> tuple[str, str, str]:
    from bench.toyworld.metrics import parse_caption

    colour, shape, background = parse_caption(prompt)
    return (ATTRIBUTE_VALUES["colour"][colour], ATTRIBUTE_VALUES["shape"][shape],
            ATTRIBUTE_VALUES["background"][background])
