"""Loader for the EF-DDPM / Plug-and-Play prompt YAML format.

Each entry: ``init_img`` (path relative to an image root, with a leading '/'), ``source_prompt``,
``target_prompts`` (list). One EditItem per (entry, target prompt); items of one entry share an
image_id (→ one inversion). Prompts are stripped of surrounding whitespace (the reference files
have trailing spaces, which CLIP's tokenizer ignores anyway).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.data.base import Dataset, check_unique_ids
from bench.data.item import EditItem, ItemError


def blend_words_from_prompts(source: str, target: str) -> tuple[str, str] | None:
    """(source word, target word) when the prompts differ in exactly one word position, else None."""
    src, tgt = source.split(), target.split()
    if len(src) != len(tgt):
        return None
    diff = [(a, b) for a, b in zip(src, tgt) if a != b]
    return diff[0] if len(diff) == 1 else None


def load_ef_yaml(yaml_path: str | Path, image_root: str | Path, dataset: str) -> list[EditItem]:
    yaml_path, image_root = Path(yaml_path), Path(image_root)
    if not yaml_path.is_file():
        raise ItemError(f"{dataset}: prompt file not found: {yaml_path}")
    entries = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ItemError(f"{yaml_path}: expected a YAML list of entries with init_img/source_prompt/target_prompts")
    items = []
    for index, entry in enumerate(entries):
        where = f"{yaml_path} entry {index}"
        if not isinstance(entry, dict):
            raise ItemError(f"{where}: expected a mapping, got {type(entry).__name__}")
        for field in ("init_img", "source_prompt", "target_prompts"):
            if not entry.get(field):
                raise ItemError(f"{where}: missing field '{field}'")
        rel = str(entry["init_img"]).strip().lstrip("/")
        image_id = Path(rel).with_suffix("").as_posix()
        source = str(entry["source_prompt"]).strip()
        targets = entry["target_prompts"]
        if isinstance(targets, str):
            targets = [targets]
        for k, target in enumerate(targets):
            target = str(target or "").strip()
            if not target:
                raise ItemError(f"{where}: target_prompts[{k}] is empty")
            items.append(EditItem(
                item_id=f"{image_id}/{k}", image_id=image_id, image_path=str(image_root / rel),
                source_prompt=source, target_prompt=target,
                blend_words=blend_words_from_prompts(source, target),
            ))
    return check_unique_ids(items, str(yaml_path))


class EFExamples(Dataset):
    """The two EF-DDPM example images and their four prompt pairs (``../shared/data/ef_ddpm_examples``)."""

    name = "ef_examples"
    version = "1"

    def __init__(self, root: str, prompts_file: str = "test.yaml"):
        self.root = Path(root)
        self.prompts_file = prompts_file

    def items(self) -> list[EditItem]:
        return load_ef_yaml(self.root / self.prompts_file, self.root, self.name)
