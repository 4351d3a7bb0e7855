"""PIE-Bench (PnPInversion) in its own format, read from a user-supplied root (the data is distributed
through a Google form, so it cannot be fetched or shipped).

Layout: ``<root>/mapping_file.json`` and ``<root>/annotation_images/<image_path>``. Each mapping entry
is keyed by a 12-digit id with fields ``image_path``, ``original_prompt``, ``editing_prompt`` (changed
words in ``[...]``), ``editing_instruction``, ``editing_type_id``, ``blended_word`` ("src tgt") and
``mask`` (run-length encoded, see ``decode_rle_mask``).

Ground-truth masks are decoded once and written as PNG files (white = edited region) into
``mask_cache_dir``; ``EditItem.mask_path`` points at them, so metrics read masks like any other file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from bench.data.base import Dataset, check_unique_ids
from bench.data.item import EditItem, ItemError
from bench.data.manifest import ManifestError, parse_blend_words
from bench.hashing import content_key
from bench.io import atomic_path

# PIE-Bench editing_type_id → category name (the numbered folders of annotation_images/)
EDITING_TYPES = {
    0: "random", 1: "change_object", 2: "add_object", 3: "delete_object", 4: "change_attribute_content",
    5: "change_attribute_pose", 6: "change_attribute_color", 7: "change_attribute_material",
    8: "change_background", 9: "change_style",
}
# names the decoding recipe; recorded in every item so a change of rule changes the item's identity
MASK_RECIPE = "pie_bench_rle/row_major/border_forced_1/v1"
REQUIRED = ("image_path", "original_prompt", "editing_prompt", "editing_type_id", "mask")


def decode_rle_mask(rle: Sequence[int], shape: tuple[int, int] = (512, 512), border: bool = True) -> np.ndarray:
    """Decode a PIE-Bench mask: ``[start_0, length_0, start_1, length_1, ...]`` runs of ones over the
    row-major flattened ``shape`` (a run is cut at the end of the image). With ``border`` (the
    PIE-Bench rule, on by default) the 1-pixel frame of the image is then set to 1, as the benchmark's
    evaluation does to absorb annotation errors at the boundary. Returns a uint8 (H, W) array of 0/1.
    """
    height, width = int(shape[0]), int(shape[1])
    total = height * width
    values = np.asarray(list(rle), dtype=np.int64)
    if values.ndim != 1 or values.size % 2:
        raise ValueError(f"RLE mask must be a flat list of (start, length) pairs; got {values.size} numbers")
    flat = np.zeros(total, dtype=np.uint8)
    for start, length in values.reshape(-1, 2):
        if start < 0 or length < 0:
            raise ValueError(f"RLE mask has a negative start/length pair ({start}, {length})")
        if start >= total and length > 0:
            raise ValueError(f"RLE run starts at {start}, outside a {height}x{width} mask; wrong mask shape?")
        flat[start:min(start + length, total)] = 1
    mask = flat.reshape(height, width)
    if border:
        mask[0, :] = 1
        mask[-1, :] = 1
        mask[:, 0] = 1
        mask[:, -1] = 1
    return mask


def write_mask_png(mask: np.ndarray, path: str | Path) -> None:
    """0/1 mask → 8-bit PNG (255 = edited), written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")


def strip_brackets(prompt: str) -> str:
    """PIE-Bench marks the changed words with [...]; the editing and evaluation code remove the brackets."""
    return prompt.replace("[", "").replace("]", "").strip()


class PIEBench(Dataset):
    name = "pie_bench"
    version = "1"

    def __init__(self, root: str, mask_cache_dir: str, mapping_file: str = "mapping_file.json",
                 images_dir: str = "annotation_images", editing_types: Sequence[int] | None = None,
                 mask_shape: Sequence[int] = (512, 512), border_rule: bool = True):
        self.root = Path(root)
        self.mask_cache_dir = Path(mask_cache_dir)
        self.mapping_file = mapping_file
        self.images_dir = images_dir
        self.editing_types = None if editing_types is None else {int(t) for t in editing_types}
        self.mask_shape = (int(mask_shape[0]), int(mask_shape[1]))
        self.border_rule = bool(border_rule)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "mask_recipe": self.recipe,
                "editing_types": sorted(self.editing_types) if self.editing_types is not None else None}

    @property
    def recipe(self) -> str:
        return MASK_RECIPE if self.border_rule else MASK_RECIPE.replace("border_forced_1", "no_border")

    def _mask_png(self, key: str, rle: list[int], where: str) -> str:
        digest = content_key([rle, list(self.mask_shape), self.recipe], 12)
        path = self.mask_cache_dir / f"{key}_{digest}.png"
        if not path.is_file():
            try:
                mask = decode_rle_mask(rle, self.mask_shape, border=self.border_rule)
            except ValueError as err:
                raise ManifestError(f"{where}: field 'mask': {err}") from err
            write_mask_png(mask, path)
        return str(path)

    def items(self) -> list[EditItem]:
        mapping_path = self.root / self.mapping_file
        if not mapping_path.is_file():
            raise ItemError(f"{self.name}: {mapping_path} not found. PIE-Bench is distributed by its authors "
                            f"(PnPInversion README, Google form); point dataset.root (or PIE_BENCH_ROOT) at the folder "
                            f"that holds mapping_file.json and {self.images_dir}/")
        try:
            mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ManifestError(f"{mapping_path}: not valid JSON ({err})") from err
        if not isinstance(mapping, dict):
            raise ManifestError(f"{mapping_path}: expected a JSON object keyed by item id")
        items = []
        for key in sorted(mapping):
            entry: Any = mapping[key]
            where = f"{mapping_path} entry {key!r}"
            if not isinstance(entry, dict):
                raise ManifestError(f"{where}: expected an object, got {type(entry).__name__}")
            missing = [f for f in REQUIRED if f not in entry]
            if missing:
                raise ManifestError(f"{where}: missing field(s) {missing}")
            try:
                type_id = int(entry["editing_type_id"])
            except (TypeError, ValueError):
                raise ManifestError(f"{where}: field 'editing_type_id'={entry['editing_type_id']!r}; "
                                    f"expected an integer 0-9") from None
            if type_id not in EDITING_TYPES:
                raise ManifestError(f"{where}: field 'editing_type_id'={type_id}; expected one of {sorted(EDITING_TYPES)}")
            if self.editing_types is not None and type_id not in self.editing_types:
                continue
            source, target = strip_brackets(str(entry["original_prompt"])), strip_brackets(str(entry["editing_prompt"]))
            for field, value in (("original_prompt", source), ("editing_prompt", target)):
                if not value:
                    raise ManifestError(f"{where}: field {field!r} is empty")
            image_path = self.root / self.images_dir / str(entry["image_path"])
            if not image_path.is_file():
                raise ItemError(f"{where}: image not found at {image_path}")
            rle = entry["mask"]
            if not isinstance(rle, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in rle):
                raise ManifestError(f"{where}: field 'mask' must be a list of integers (RLE start/length pairs)")
            raw_blend = str(entry.get("blended_word") or "").strip()
            blend = parse_blend_words(raw_blend, where) if len(raw_blend.split()) == 2 else None
            items.append(EditItem(
                item_id=str(key), image_id=str(key), image_path=str(image_path),
                source_prompt=source, target_prompt=target, blend_words=blend,
                edit_category=EDITING_TYPES[type_id], mask_path=self._mask_png(str(key), rle, where),
                extra={"editing_type_id": type_id, "editing_instruction": str(entry.get("editing_instruction", "")),
                       "editing_prompt_marked": str(entry["editing_prompt"]), "blended_word": raw_blend,
                       "mask_recipe": self.recipe, "mask_rle_key": content_key(rle)},
            ))
        if not items:
            raise ItemError(f"{mapping_path}: no items (editing_types filter {sorted(self.editing_types or [])})")
        return check_unique_ids(items, str(mapping_path))
