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
    """The two EF-DDPM example images and their four prompt pairs.

    Read from ``<root>/<prompts_file>`` (``../shared/data/ef_ddpm_examples``, the reference YAML) when it
    exists; otherwise from the manifest ``datasets/ef_examples/manifest.yaml`` with the images in the
    download cache ``<data_dir>/ef_examples/`` (``bench data fetch ef_examples``). Both give the same items.
    """

    name = "ef_examples"
    version = "1"

    def __init__(self, root: str | None = None, prompts_file: str = "test.yaml", data_dir: str | None = None):
        self.root = Path(root) if root else None
        self.prompts_file = prompts_file
        self.data_dir = data_dir

    def items(self) -> list[EditItem]:
        if self.root is not None and (self.root / self.prompts_file).is_file():
            return load_ef_yaml(self.root / self.prompts_file, self.root, self.name)
        if self.data_dir:
            from bench.data.manifest import ManifestDataset

            return ManifestDataset(MANIFEST_NAME, data_dir=self.data_dir).items()
        raise ItemError(f"{self.name}: prompt file not found: {self.root and self.root / self.prompts_file}; "
                        f"set paths.shared_data_dir, or run `bench data fetch {self.name}` and set paths.data_dir")


MANIFEST_NAME = "ef_examples"
EF_REPO = "inbarhub/DDPM_inversion"
EF_COMMIT = "58fc881772d34f0c24be9e34725d213731aa009d"
EF_SHARED_FOLDER = "ef_ddpm_examples"


def build_ef_manifest(shared_data_dir: str | Path) -> dict:
    """The ef_examples manifest from the shared copy of test.yaml; image sha256s are computed from the
    copies and cross-checked against the folder's SOURCE.md."""
    from bench.data.zero_shot import source_md_hashes
    from bench.fingerprint import file_sha256

    folder = Path(shared_data_dir) / EF_SHARED_FOLDER
    listed = source_md_hashes(folder / "SOURCE.md")
    groups: dict[str, list[EditItem]] = {}
    for item in load_ef_yaml(folder / "test.yaml", folder, MANIFEST_NAME):
        groups.setdefault(item.image_id, []).append(item)
    images = []
    for image_id, items in groups.items():
        rel = Path(items[0].image_path).relative_to(folder).as_posix()
        sha = file_sha256(items[0].image_path)
        if listed.get(rel) != sha:
            raise ItemError(f"{items[0].image_path}: sha256 {sha} does not match SOURCE.md ({listed.get(rel)})")
        images.append({
            "id": image_id, "file": rel,
            "url": f"https://raw.githubusercontent.com/{EF_REPO}/{EF_COMMIT}/{rel}",
            "sha256": sha, "shared_path": f"{EF_SHARED_FOLDER}/{rel}",
            "source_prompt": items[0].source_prompt,
            "edits": [{"target_prompt": it.target_prompt,
                       "blend_words": list(it.blend_words) if it.blend_words else None} for it in items],
        })
    return {
        "name": MANIFEST_NAME, "version": "1",
        "title": "EF-DDPM example images (smoke-test set): 2 images, 4 pairs",
        "licence": f"{EF_REPO} is MIT (Copyright (c) 2023 inbarhub); the images' own copyright is not stated: "
                   "research use only",
        "provenance": {"images": f"{EF_REPO} @ {EF_COMMIT} example_images/*.jpg",
                       "prompts": f"{EF_REPO} @ {EF_COMMIT} test.yaml (blend words where the prompts differ in one word)"},
        "images": images,
    }


if __name__ == "__main__":
    import sys

    from bench.io import write_text

    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.data.ef_yaml <shared_data_dir> <manifest.yaml>")
    header = ("# GENERATED by `python -m bench.data.ef_yaml <shared_data_dir> <this file>`; edit the generator.\n"
              "# The reference prompts file is test.yaml; this manifest lets `bench data fetch ef_examples` get the images.\n")
    write_text(sys.argv[2], header + yaml.safe_dump(build_ef_manifest(sys.argv[1]), sort_keys=False, width=120))
