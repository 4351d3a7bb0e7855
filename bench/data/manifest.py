"""Dataset manifests: what a dataset contains and where each image comes from, without the images.

A manifest is a YAML file (``datasets/<name>/manifest.yaml``)::

    name: zero_shot_i2it
    version: "1"
    archives:                      # optional: tarballs that images are taken from
      imagenet-r:
        url: https://.../imagenet-r.tar
        sha256: null               # unknown: trust on first use (recorded in a lock file)
    images:
      - id: cats/cat_1             # unique; items are "<id>/<k>"
        file: cats/cat_1.png       # where it lands in the cache: <data_dir>/<name>/<file>
        url: https://...           # a direct download, or
        archive: imagenet-r        #   an archive key + the member path inside it
        member: imagenet-r/n02123045/sketch_20.jpg
        sha256: cf3e...            # or null (unknown)
        shared_path: modified_zero_shot_i2it/...   # optional: the copy under paths.shared_data_dir
        source_prompt: a photo of a cat
        edits:                     # or `target_prompts: [...]` (+ image-level blend_words/category)
          - target_prompt: a photo of a dog
            blend_words: [cat, dog]
            category: cat2dog

``load_manifest`` validates everything and names the file, the entry and the field on any error.
``ManifestDataset`` turns a manifest into ``EditItem``s, finding each image in the download cache,
then under the shared-data folder, then under an optional user root; loading never uses the network.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from bench.data.base import Dataset, check_unique_ids
from bench.data.item import EditItem, ItemError
from bench.data.locks import ShaLock, lock_file

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ItemError):
    """A manifest (or prompts file) that is malformed: names the file, the entry and the field."""


@dataclass(frozen=True)
class Edit:
    target_prompt: str
    blend_words: tuple[str, str] | None = None
    category: str = ""


@dataclass(frozen=True)
class Archive:
    key: str
    url: str
    sha256: str | None
    filename: str  # name of the downloaded archive in <cache>/_archives/


@dataclass(frozen=True)
class ImageEntry:
    id: str
    file: str
    source_prompt: str
    edits: tuple[Edit, ...]
    url: str | None = None
    archive: str | None = None
    member: str | None = None
    sha256: str | None = None
    shared_path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # provenance notes (wnid, ...); not part of items


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    version: str
    images: tuple[ImageEntry, ...]
    archives: dict[str, Archive]
    sha256: str  # of the manifest file: changes whenever its content does

    def image(self, image_id: str) -> ImageEntry:
        for entry in self.images:
            if entry.id == image_id:
                return entry
        raise KeyError(image_id)


# ----------------------------------------------------------------------------------------------
# parsing helpers shared with the folder dataset


def _text(value: Any, where: str, name: str, required: bool = True) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ManifestError(f"{where}: missing field '{name}'; expected a non-empty string")
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ManifestError(f"{where}: field '{name}'={value!r}; expected a string")
    return str(value).strip()


def _relative(value: str, where: str, name: str) -> str:
    path = PurePosixPath(value.replace("\\", "/").lstrip("/"))
    if not path.parts or ".." in path.parts:
        raise ManifestError(f"{where}: field '{name}'={value!r}; expected a relative path without '..'")
    return path.as_posix()


def _file_name(value: str, where: str, name: str) -> str:
    """A single path component (a dataset or archive name joined under the cache): no '/', '..' or drive."""
    if value in (".", "..") or any(sep in value for sep in ("/", "\\", ":")) or value.startswith("~"):
        raise ManifestError(f"{where}: field '{name}'={value!r}; expected a plain name (no '/', '..', '~' or drive): "
                            "it names a folder or file inside the download cache")
    return value


def parse_blend_words(value: Any, where: str) -> tuple[str, str] | None:
    """``[src, tgt]``, ``"src tgt"`` or null → (src, tgt) | None; anything else is an error."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise ManifestError(f"{where}: field 'blend_words'={value!r}; expected [source_word, target_word]")
    return (value[0].strip(), value[1].strip())


def parse_edits(entry: dict, where: str) -> tuple[Edit, ...]:
    """The edits of one image entry: ``edits: [{target_prompt, blend_words, category}]`` or
    ``target_prompts: [...]`` with optional image-level ``blend_words`` / ``category``."""
    if "edits" in entry and "target_prompts" in entry:
        raise ManifestError(f"{where}: has both 'edits' and 'target_prompts'; use one of them")
    edits = []
    if "edits" in entry:
        raw = entry["edits"]
        if not isinstance(raw, list) or not raw:
            raise ManifestError(f"{where}: field 'edits' must be a non-empty list of {{target_prompt, ...}}")
        for k, edit in enumerate(raw):
            ewhere = f"{where} edits[{k}]"
            if not isinstance(edit, dict):
                raise ManifestError(f"{ewhere}: expected a mapping with 'target_prompt', got {edit!r}")
            unknown = set(edit) - {"target_prompt", "blend_words", "category"}
            if unknown:
                raise ManifestError(f"{ewhere}: unknown field(s) {sorted(unknown)}")
            edits.append(Edit(_text(edit.get("target_prompt"), ewhere, "target_prompt"),
                              parse_blend_words(edit.get("blend_words"), ewhere),
                              _text(edit.get("category"), ewhere, "category", required=False) or ""))
    else:
        raw = entry.get("target_prompts", entry.get("target_prompt"))
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise ManifestError(f"{where}: missing field 'target_prompts' (or 'edits'); expected a non-empty list")
        blend = parse_blend_words(entry.get("blend_words"), where)
        category = _text(entry.get("category"), where, "category", required=False) or ""
        for k, target in enumerate(raw):
            edits.append(Edit(_text(target, f"{where} target_prompts[{k}]", "target_prompt"), blend, category))
    return tuple(edits)


_IMAGE_FIELDS = {"id", "file", "url", "archive", "member", "sha256", "shared_path", "source_prompt",
                 "edits", "target_prompts", "blend_words", "category", "info"}


def _parse_image(entry: Any, where: str, archives: dict[str, Archive]) -> ImageEntry:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - _IMAGE_FIELDS
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}; expected some of {sorted(_IMAGE_FIELDS)}")
    image_id = _text(entry.get("id"), where, "id")
    where = f"{where} (id {image_id!r})"
    file = _relative(_text(entry.get("file"), where, "file"), where, "file")
    url = _text(entry.get("url"), where, "url", required=False)
    archive = _text(entry.get("archive"), where, "archive", required=False)
    member = _text(entry.get("member"), where, "member", required=False)
    if url and archive:
        raise ManifestError(f"{where}: has both 'url' and 'archive'; an image comes from one place")
    if archive:
        if archive not in archives:
            raise ManifestError(f"{where}: field 'archive'={archive!r} is not declared under 'archives' "
                                f"(declared: {sorted(archives)})")
        if not member:
            raise ManifestError(f"{where}: missing field 'member' (the path inside archive {archive!r})")
        member = _relative(member, where, "member")
    elif member:
        raise ManifestError(f"{where}: field 'member' needs 'archive'")
    if url and not url.startswith(("http://", "https://")):
        raise ManifestError(f"{where}: field 'url'={url!r}; expected an http(s) URL")
    sha = entry.get("sha256")
    if sha is not None:
        sha = str(sha).strip().lower()
        if not SHA256_RE.match(sha):
            raise ManifestError(f"{where}: field 'sha256'={entry['sha256']!r}; expected 64 hex digits or null")
    shared = _text(entry.get("shared_path"), where, "shared_path", required=False)
    info = entry.get("info") or {}
    if not isinstance(info, dict):
        raise ManifestError(f"{where}: field 'info' must be a mapping")
    return ImageEntry(
        id=image_id, file=file, source_prompt=_text(entry.get("source_prompt"), where, "source_prompt"),
        edits=parse_edits(entry, where), url=url, archive=archive, member=member, sha256=sha,
        shared_path=_relative(shared, where, "shared_path") if shared else None,
        info=info,
    )


def _parse_archives(raw: Any, where: str) -> dict[str, Archive]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: field 'archives' must be a mapping of key → {{url, sha256}}")
    archives = {}
    for key, spec in raw.items():
        awhere = f"{where} archives.{key}"
        if not isinstance(spec, dict):
            raise ManifestError(f"{awhere}: expected a mapping with 'url' and 'sha256'")
        url = _text(spec.get("url"), awhere, "url")
        if not url.startswith(("http://", "https://")):
            raise ManifestError(f"{awhere}: field 'url'={url!r}; expected an http(s) URL")
        sha = spec.get("sha256")
        if sha is not None and not SHA256_RE.match(str(sha).lower()):
            raise ManifestError(f"{awhere}: field 'sha256'={sha!r}; expected 64 hex digits or null")
        filename = _text(spec.get("filename"), awhere, "filename", required=False) or PurePosixPath(url).name
        filename = _file_name(filename, awhere, "filename")
        archives[str(key)] = Archive(str(key), url, str(sha).lower() if sha else None, filename)
    return archives


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest; raises ManifestError naming the file, the entry and the field."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    raw_bytes = path.read_bytes()
    try:
        data = yaml.safe_load(raw_bytes.decode("utf-8"))
    except yaml.YAMLError as err:
        raise ManifestError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a mapping with 'name', 'version' and 'images'")
    where = str(path)
    name = _file_name(_text(data.get("name"), where, "name"), where, "name")
    version = _text(data.get("version"), where, "version")
    archives = _parse_archives(data.get("archives"), where)
    images_raw = data.get("images")
    if not isinstance(images_raw, list) or not images_raw:
        raise ManifestError(f"{path}: field 'images' must be a non-empty list")
    images: list[ImageEntry] = []
    seen: dict[str, int] = {}
    files: dict[str, int] = {}
    for index, entry in enumerate(images_raw):
        image = _parse_image(entry, f"{path} images[{index}]", archives)
        if image.id in seen:
            raise ManifestError(f"{path} images[{index}]: duplicate id {image.id!r} (first at images[{seen[image.id]}])")
        if image.file in files:
            raise ManifestError(f"{path} images[{index}]: file {image.file!r} is also used by "
                                f"images[{files[image.file]}]")
        seen[image.id] = index
        files[image.file] = index
        images.append(image)
    return Manifest(path=path, name=name, version=version, images=tuple(images), archives=archives,
                    sha256=hashlib.sha256(raw_bytes).hexdigest())


# ----------------------------------------------------------------------------------------------
# locating manifests and images


def repo_root() -> Path:
    env = os.environ.get("EDITBENCH_ROOT")
    if env and (Path(env) / "datasets").is_dir():
        return Path(env)
    return Path(__file__).resolve().parents[2]


def manifest_path(name_or_path: str | os.PathLike) -> Path:
    """``datasets/<name>/manifest.yaml`` for a dataset name, or the path itself if it is a file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = repo_root() / "datasets" / str(name_or_path) / "manifest.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in (repo_root() / "datasets").glob("*/manifest.yaml"))
        raise ManifestError(f"unknown dataset {str(name_or_path)!r}: no manifest at {path}; known: {known}")
    return path


def cache_path(manifest: Manifest, data_dir: str | os.PathLike, entry: ImageEntry) -> Path:
    return Path(data_dir) / manifest.name / entry.file


def _expected_sha(manifest: Manifest, data_dir: str | os.PathLike | None, entry: ImageEntry) -> str | None:
    if entry.sha256:
        return entry.sha256
    if data_dir is None:
        return None
    return ShaLock(lock_file(data_dir, manifest.name)).get(entry.file)


class ManifestDataset(Dataset):
    """A dataset defined by a manifest. Images are looked up, in order, in the download cache
    (``<data_dir>/<name>/<file>``), under ``shared_data_dir/<shared_path>``, and under ``user_root``
    (``<user_root>/<member>`` or ``<user_root>/<file>``). ``verify_sha256`` checks each found file
    against the manifest hash (or the hash recorded on first use)."""

    default_manifest: str | None = None

    def __init__(self, manifest: str | None = None, data_dir: str | None = None, shared_data_dir: str | None = None,
                 user_root: str | None = None, verify_sha256: bool = True):
        manifest = manifest or self.default_manifest
        if not manifest:
            raise ManifestError(f"{type(self).__name__}: no manifest given")
        self.manifest = load_manifest(manifest_path(manifest))
        self.name = self.manifest.name
        self.version = self.manifest.version
        self.data_dir = data_dir
        self.shared_data_dir = shared_data_dir
        self.user_root = user_root
        self.verify_sha256 = verify_sha256

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "manifest_sha256": self.manifest.sha256}

    def candidates(self, entry: ImageEntry) -> list[Path]:
        paths = []
        if self.data_dir:
            paths.append(cache_path(self.manifest, self.data_dir, entry))
        if self.shared_data_dir and entry.shared_path:
            paths.append(Path(self.shared_data_dir) / entry.shared_path)
        if self.user_root:
            root = Path(self.user_root)
            if entry.member:
                member = PurePosixPath(entry.member)
                paths.append(root / member)
                if len(member.parts) > 1:  # the user points at the extracted top folder itself
                    paths.append(root / PurePosixPath(*member.parts[1:]))
            paths.append(root / entry.file)
        return paths

    def locate(self, entry: ImageEntry) -> Path:
        tried = self.candidates(entry)
        for path in tried:
            if path.is_file():
                if self.verify_sha256:
                    self._verify(entry, path)
                return path
        raise ItemError(
            f"{self.name}: image {entry.id!r} not found; looked in: {[str(p) for p in tried] or 'nowhere'}. "
            f"Run `bench data fetch {self.name}` (or set paths.data_dir / EDITBENCH_DATA"
            f"{', paths.shared_data_dir / EDITBENCH_SHARED_DATA' if entry.shared_path else ''})")

    def _verify(self, entry: ImageEntry, path: Path) -> None:
        from bench.fingerprint import file_sha256

        expected = _expected_sha(self.manifest, self.data_dir, entry)
        if expected is None:
            return
        actual = file_sha256(path)
        if actual != expected:
            raise ItemError(f"{self.name}: image {entry.id!r} at {path} has sha256 {actual}; expected {expected} "
                            f"(from {self.manifest.path}). Delete it and run `bench data fetch {self.name}`")

    def items(self) -> list[EditItem]:
        items = []
        for entry in self.manifest.images:
            image_path = str(self.locate(entry))
            for k, edit in enumerate(entry.edits):
                items.append(EditItem(
                    item_id=f"{entry.id}/{k}", image_id=entry.id, image_path=image_path,
                    source_prompt=entry.source_prompt, target_prompt=edit.target_prompt,
                    blend_words=edit.blend_words, edit_category=edit.category,
                ))
        for item in items:
            item.validate()
        return check_unique_ids(items, str(self.manifest.path))
