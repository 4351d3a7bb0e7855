"""A user folder of images plus a prompts file: new data without code (e.g. your own horse↔zebra set).

``root/prompts.yaml`` — a list, one entry per image::

    - image: horses/horse_1.jpg          # relative to root
      source_prompt: a photo of a horse
      target_prompts: [a photo of a zebra]   # or `edits: [{target_prompt, blend_words, category}]`
      blend_words: [horse, zebra]        # optional; default: the one differing word, if exactly one differs
      category: horse2zebra              # optional
      mask: masks/horse_1.png            # optional ground-truth edit region (white = edited)

Files must lie inside ``root``: a symlink that resolves outside it is refused. A listed image that does
not exist fails its items only (recorded as failed edits), not the whole job.

``root/prompts.csv`` — one row per (image, target prompt); header
``image,source_prompt,target_prompt[,blend_source,blend_target,category,mask]``. Rows of one image
must share its source prompt.

Item ids are ``<image path without extension>/<k>``, k counting the image's target prompts in order.
"""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from bench.data.base import Dataset, check_unique_ids
from bench.data.ef_yaml import blend_words_from_prompts
from bench.data.item import EditItem
from bench.data.manifest import Edit, ManifestError, _relative, _text, parse_blend_words, parse_edits

CSV_REQUIRED = ("image", "source_prompt", "target_prompt")
CSV_OPTIONAL = ("blend_source", "blend_target", "category", "mask")
YAML_FIELDS = {"image", "source_prompt", "target_prompts", "target_prompt", "edits", "blend_words", "category", "mask"}


def _read_yaml(path: Path) -> list[tuple[str, str, list[Edit], str | None]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, list) or not data:
        raise ManifestError(f"{path}: expected a non-empty YAML list of entries with image/source_prompt/target_prompts")
    rows = []
    for index, entry in enumerate(data):
        where = f"{path} entry {index}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected a mapping, got {type(entry).__name__}")
        unknown = set(entry) - YAML_FIELDS
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}; expected some of {sorted(YAML_FIELDS)}")
        image = _relative(_text(entry.get("image"), where, "image"), where, "image")
        source = _text(entry.get("source_prompt"), where, "source_prompt")
        mask = _text(entry.get("mask"), where, "mask", required=False)
        rows.append((image, source, list(parse_edits(entry, where)), _relative(mask, where, "mask") if mask else None))
    return rows


def _read_csv(path: Path) -> list[tuple[str, str, list[Edit], str | None]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in CSV_REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}; header is {header}, expected "
                                f"{list(CSV_REQUIRED)} (+ optional {list(CSV_OPTIONAL)})")
        unknown = [c for c in header if c not in CSV_REQUIRED + CSV_OPTIONAL]
        if unknown:
            raise ManifestError(f"{path}: unknown column(s) {unknown}")
        groups: dict[str, tuple[str, str, list[Edit], str | None]] = {}
        for line, row in enumerate(reader, start=2):
            where = f"{path} row {line}"
            image = _relative(_text(row.get("image"), where, "image"), where, "image")
            source = _text(row.get("source_prompt"), where, "source_prompt")
            target = _text(row.get("target_prompt"), where, "target_prompt")
            src_word, tgt_word = (row.get("blend_source") or "").strip(), (row.get("blend_target") or "").strip()
            if bool(src_word) != bool(tgt_word):
                raise ManifestError(f"{where}: give both 'blend_source' and 'blend_target' or neither")
            blend = parse_blend_words([src_word, tgt_word] if src_word else None, where)
            mask = _text(row.get("mask"), where, "mask", required=False)
            mask = _relative(mask, where, "mask") if mask else None
            edit = Edit(target, blend, (row.get("category") or "").strip())
            if image in groups:
                first = groups[image]
                if first[1] != source or first[3] != mask:
                    raise ManifestError(f"{where}: image {image!r} has a different source_prompt or mask than its "
                                        f"first row ({first[1]!r}, {first[3]!r})")
                first[2].append(edit)
            else:
                groups[image] = (image, source, [edit], mask)
    if not groups:
        raise ManifestError(f"{path}: no rows")
    return list(groups.values())


class FolderDataset(Dataset):
    """Images under ``root`` described by ``root/<prompts>`` (YAML or CSV, see the module docstring)."""

    def __init__(self, root: str | None, prompts: str = "prompts.yaml", name: str = "folder", version: str = "1"):
        self.root = Path(root) if root else None
        self.prompts = prompts
        self.name = name
        self.version = version

    def describe(self) -> dict:
        from bench.fingerprint import file_sha256

        path = self.root / self.prompts if self.root else None
        return {"name": self.name, "version": self.version,
                "prompts_sha256": file_sha256(path) if path and path.is_file() else None}

    def _inside_root(self, relative: str, prompts: Path) -> Path:
        """``root/relative``, refusing a symlink that leads outside the dataset folder."""
        candidate = self.root / relative
        resolved, root = candidate.resolve(), self.root.resolve()
        if not resolved.is_relative_to(root):
            raise ManifestError(f"{prompts}: {relative!r} resolves to {resolved}, outside the dataset folder {root} "
                                "(a symlink); copy the file into the folder")
        return candidate

    def items(self) -> list[EditItem]:
        if self.root is None:
            raise ManifestError(f"{self.name}: no folder given; set dataset.root=/path/to/folder (or EDITBENCH_FOLDER)")
        path = self.root / self.prompts
        if not path.is_file():
            raise ManifestError(f"{self.name}: prompts file not found: {path} (expected YAML or CSV, see docs/datasets.md)")
        rows = _read_csv(path) if path.suffix.lower() == ".csv" else _read_yaml(path)
        items = []
        for image, source, edits, mask in rows:
            # a missing image is an item-level failure (recorded by the runner); the other items still run
            image_path = self._inside_root(image, path)
            mask_path = None
            if mask:
                mask_path = self._inside_root(mask, path)
                if not mask_path.is_file():
                    raise ManifestError(f"{path}: mask {mask!r} of image {image!r} not found at {mask_path}")
            image_id = Path(image).with_suffix("").as_posix()
            for k, edit in enumerate(edits):
                items.append(EditItem(
                    item_id=f"{image_id}/{k}", image_id=image_id, image_path=str(image_path),
                    source_prompt=source, target_prompt=edit.target_prompt,
                    blend_words=edit.blend_words or blend_words_from_prompts(source, edit.target_prompt),
                    edit_category=edit.category, mask_path=str(mask_path) if mask_path else None,
                ))
        for item in items:
            item.validate()
        return check_unique_ids(items, str(path))
