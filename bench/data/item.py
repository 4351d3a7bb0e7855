"""The dataset item contract.

One ``EditItem`` is one (source image, target prompt) pair. Items that share ``image_id`` and
``source_prompt`` share one inversion. Everything an item points to is a file on disk (images,
masks, ground-truth targets), so an item is plain, JSON-serialisable data and its identity can be
hashed from file contents (sha256), never from paths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ItemError(ValueError):
    """A dataset item that cannot be used (missing file, unreadable image, empty prompt, ...)."""


@dataclass(frozen=True)
class EditItem:
    item_id: str  # unique within the dataset, e.g. "horse_mud/1"
    image_id: str  # items with the same image_id (and source prompt) share one inversion
    image_path: str  # the source image file (any size; preprocessing crops and resizes)
    source_prompt: str
    target_prompt: str
    blend_words: tuple[str, str] | None = None  # (word in source prompt, word in target prompt)
    edit_category: str = ""
    mask_path: str | None = None  # ground-truth edit region, white = edited (PNG, any size)
    target_image_path: str | None = None  # ground-truth edited image (toy world)
    extra: dict[str, Any] = field(default_factory=dict)  # per-item hints (e.g. eq params), JSON-serialisable

    def validate(self) -> None:
        """Raise ItemError naming the item and the field when the item cannot be edited."""
        for name in ("item_id", "image_id", "image_path"):
            if not getattr(self, name):
                raise ItemError(f"item {self.item_id!r}: field '{name}' is empty")
        for name in ("source_prompt", "target_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ItemError(f"item {self.item_id!r}: field '{name}' is empty; expected a non-empty prompt")
        if self.blend_words is not None and len(self.blend_words) != 2:
            raise ItemError(f"item {self.item_id!r}: blend_words={self.blend_words!r}; expected (source_word, target_word)")

    def describe(self) -> dict[str, Any]:
        """The item as plain data (for records)."""
        data = dataclasses.asdict(self)
        if self.blend_words is not None:
            data["blend_words"] = list(self.blend_words)
        return data
