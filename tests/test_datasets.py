"""Dataset manifests and loaders (offline): manifests validate, loaders find images in the cache, the
shared-data folder or a user root, the folder and PIE-Bench formats load, bad inputs give clear errors."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, SHARED_DATA, write_imagenet_r_tree, write_pie_fixture
from PIL import Image

from bench.config import group_options
from bench.data.ef_yaml import EFExamples
from bench.data.folder import FolderDataset
from bench.data.imagenet_r import CLASS_WNIDS, ImageNetRTI2I, build_manifest
from bench.data.item import ItemError
from bench.data.manifest import ManifestDataset, ManifestError, load_manifest, manifest_path
from bench.data.pie_bench import EDITING_TYPES, PIEBench, decode_rle_mask
from bench.data.zero_shot import ZeroShotI2IT, source_md_hashes

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder absent: {SHARED_DATA}")
PNP_YAML = SHARED_DATA / "modified_imagenet_r_ti2i/benchmarks/ImageNetR-TI2I/imnetr-ti2i-source-prompt.yaml"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during loading: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# ---------------------------------------------------------------------------------------------- manifests


def test_imagenet_r_manifest(no_network):
    manifest = load_manifest(manifest_path("imagenet_r_ti2i"))
    assert manifest.name == "imagenet_r_ti2i"
    assert len(manifest.images) == 30
    assert sum(len(e.edits) for e in manifest.images) == 150
    assert manifest.archives["imagenet-r"].url == "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
    raw = yaml.safe_load(manifest.path.read_text())
    categories = []
    for entry in manifest.images:
        cls, filename = entry.file.split("/")
        wnid = CLASS_WNIDS[cls][0]
        assert entry.member == f"imagenet-r/{wnid}/{filename}"
        assert raw["classes"][cls]["wnid"] == wnid and "imagenet_r_wnids" in raw["classes"][cls]["verified"]
        assert len(entry.edits) == 5
        for edit in entry.edits:
            src_word, tgt_word = edit.blend_words
            assert src_word in entry.source_prompt.split() and tgt_word in edit.target_prompt.split()
            categories.append(edit.category)
        # PnP structure: 3 rendition-only edits, then 2 that change the class too
        assert [e.category for e in entry.edits] == ["rendition"] * 3 + ["rendition+class"] * 2
    assert categories.count("rendition") == 90 and categories.count("rendition+class") == 60
    assert len({c[0] for c in CLASS_WNIDS.values()}) == 10


@needs_shared
def test_imagenet_r_manifest_matches_pnp_prompts():
    """The committed manifest is exactly what the generator makes from the shared PnP file."""
    committed = yaml.safe_load(manifest_path("imagenet_r_ti2i").read_text())
    assert committed == build_manifest(PNP_YAML)
    pnp = yaml.safe_load(PNP_YAML.read_text())
    for image, entry in zip(committed["images"], pnp):
        assert [e["target_prompt"] for e in image["edits"]] == [t.strip() for t in entry["target_prompts"]]
        assert image["source_prompt"] == entry["source_prompt"].strip()


def test_imagenet_r_loads_from_user_root_offline(tmp_path, no_network):
    root = write_imagenet_r_tree(tmp_path) / "imagenet-r"
    empty_cache = tmp_path / "cache"
    with pytest.raises(ItemError, match=r"penguin/sketch_8.*bench data fetch imagenet_r_ti2i"):
        ImageNetRTI2I(data_dir=str(empty_cache)).items()
    items = ImageNetRTI2I(data_dir=str(empty_cache), user_root=str(root)).items()
    assert len(items) == 150 and len({i.image_id for i in items}) == 30
    assert items[0].item_id == "penguin/sketch_8/0"
    assert items[0].image_path == str(root / "n02056570" / "sketch_8.jpg")
    assert items[3].blend_words == ("penguin", "swan") and items[3].edit_category == "rendition+class"


def test_zero_shot_manifest(no_network):
    manifest = load_manifest(manifest_path("zero_shot_i2it"))
    assert len(manifest.images) == 18
    assert sorted(e.id for e in manifest.images) == sorted(
        [f"cats/cat_{k}" for k in range(1, 10)] + [f"dogs/dog_{k}" for k in range(1, 10)])
    for entry in manifest.images:
        animal, other = ("cat", "dog") if entry.id.startswith("cats/") else ("dog", "cat")
        assert entry.source_prompt == f"a photo of a {animal}"
        assert [(e.target_prompt, e.blend_words, e.category) for e in entry.edits] == [
            (f"a photo of a {other}", (animal, other), f"{animal}2{other}")]
        assert entry.url == ("https://raw.githubusercontent.com/pix2pixzero/pix2pix-zero/"
                             f"16e5c1dd4b51731d3d66b2b85c8d6c842639e4cf/assets/test_images/{entry.file}")
        assert entry.sha256 and len(entry.sha256) == 64


@needs_shared
def test_manifest_hashes_match_shared_source_md():
    for name, folder in (("zero_shot_i2it", "modified_zero_shot_i2it"), ("ef_examples", "ef_ddpm_examples")):
        listed = source_md_hashes(SHARED_DATA / folder / "SOURCE.md")
        for entry in load_manifest(manifest_path(name)).images:
            rel = entry.shared_path.removeprefix(folder + "/")
            assert listed[rel] == entry.sha256, (name, entry.id)


def test_ef_examples_manifest(no_network):
    manifest = load_manifest(manifest_path("ef_examples"))
    assert [e.id for e in manifest.images] == ["example_images/horse_mud", "example_images/sketch_cat"]
    assert sum(len(e.edits) for e in manifest.images) == 4
    assert all(e.url and e.sha256 for e in manifest.images)


# ---------------------------------------------------------------------------------------------- shared data


@needs_shared
def test_zero_shot_loads_from_shared_data(tmp_path, no_network):
    items = ZeroShotI2IT(data_dir=str(tmp_path / "empty"), shared_data_dir=str(SHARED_DATA)).items()
    assert len(items) == 18
    assert all(Path(i.image_path).is_file() and str(SHARED_DATA) in i.image_path for i in items)
    cat = next(i for i in items if i.item_id == "cats/cat_1/0")
    assert (cat.source_prompt, cat.target_prompt, cat.blend_words) == ("a photo of a cat", "a photo of a dog",
                                                                       ("cat", "dog"))
    # the cache wins over the shared copy; a corrupt cached file is caught by the sha256 check
    cached = tmp_path / "cache" / "zero_shot_i2it" / "cats" / "cat_1.png"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the image")
    with pytest.raises(ItemError, match=r"cats/cat_1.*sha256"):
        ZeroShotI2IT(data_dir=str(tmp_path / "cache"), shared_data_dir=str(SHARED_DATA)).items()


@needs_shared
def test_ef_examples_shared_and_cache_give_the_same_items(tmp_path, no_network):
    shared = EFExamples(root=str(SHARED_DATA / "ef_ddpm_examples")).items()
    assert len(shared) == 4 and shared[0].item_id == "example_images/horse_mud/0"
    cache = tmp_path / "cache"  # what `bench data fetch ef_examples` leaves behind
    for name in ("horse_mud.jpg", "sketch_cat.jpg"):
        (cache / "ef_examples/example_images").mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED_DATA / "ef_ddpm_examples/example_images" / name, cache / "ef_examples/example_images" / name)
    fetched = EFExamples(root=str(tmp_path / "absent"), data_dir=str(cache)).items()
    strip = lambda items: [i.describe() | {"image_path": Path(i.image_path).name} for i in items]  # noqa: E731
    assert strip(fetched) == strip(shared)
    with pytest.raises(ItemError, match="bench data fetch ef_examples"):
        EFExamples(root=str(tmp_path / "absent")).items()


SHARED_ITEM_COUNTS = {"zero_shot_i2it": 18, "ef_examples": 4}  # datasets whose items come from ../shared/data


@pytest.mark.parametrize("name", group_options("dataset"))
def test_dataset_config_instantiates(name, tmp_path, monkeypatch):
    """Every file of conf/dataset/ instantiates its Dataset (discovered: a new config is tested too)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from bench.data.base import Dataset

    monkeypatch.setenv("EDITBENCH_SHARED_DATA", str(SHARED_DATA))
    monkeypatch.setenv("EDITBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("EDITBENCH_CACHE", str(tmp_path / "cache"))
    paths = OmegaConf.load(REPO_ROOT / "conf/paths/default.yaml")
    cfg = OmegaConf.create({"paths": paths, "run_name": "t",
                            "dataset": OmegaConf.load(REPO_ROOT / f"conf/dataset/{name}.yaml")})
    params = OmegaConf.to_container(cfg.dataset, resolve=True)
    assert params.pop("shard") == 0 and params.pop("num_shards") == 1
    dataset = instantiate(params)
    assert isinstance(dataset, Dataset) and dataset.name
    if name in SHARED_ITEM_COUNTS and SHARED_DATA.is_dir():
        assert len(dataset.items()) == SHARED_ITEM_COUNTS[name]


# ---------------------------------------------------------------------------------------------- PIE-Bench


def reference_decode(rle, height, width, border=True):
    """Written independently: a pixel (r, c) is set iff its row-major index falls in a run, or (with the
    border rule) it lies on the outermost rows/columns."""
    runs = list(zip(rle[0::2], rle[1::2]))
    out = [[0] * width for _ in range(height)]
    for r in range(height):
        for c in range(width):
            index = r * width + c
            inside = any(start <= index < start + length for start, length in runs)
            edge = r in (0, height - 1) or c in (0, width - 1)
            out[r][c] = int(inside or (border and edge))
    return np.array(out, dtype=np.uint8)


def test_decode_rle_mask_border_rule():
    h, w = 6, 9
    rle = [20, 4, 38, 3]  # two interior runs, away from the frame
    mask = decode_rle_mask(rle, (h, w))
    assert mask.dtype == np.uint8 and mask.shape == (h, w)
    np.testing.assert_array_equal(mask, reference_decode(rle, h, w))
    # the border rule explicitly: the whole frame is 1 although no run touches it ...
    assert mask[0].all() and mask[-1].all() and mask[:, 0].all() and mask[:, -1].all()
    # ... and without the rule the frame is 0 and only the runs remain
    plain = decode_rle_mask(rle, (h, w), border=False)
    np.testing.assert_array_equal(plain, reference_decode(rle, h, w, border=False))
    assert plain.sum() == 7 and plain[2, 2] == 1 and plain[2, 5] == 1 and plain[4, 2] == 1
    # a run past the end is cut; a run that starts outside, an odd list or negatives are errors
    np.testing.assert_array_equal(decode_rle_mask([50, 100], (h, w), border=False).ravel()[50:], np.ones(4))
    for bad in ([60, 2], [1, 2, 3], [-1, 2]):
        with pytest.raises(ValueError):
            decode_rle_mask(bad, (h, w))


def test_pie_bench_loads_with_masks(tmp_path, no_network):
    h, w = 24, 32
    mapping = write_pie_fixture(tmp_path / "pie", h, w)
    dataset = PIEBench(root=str(tmp_path / "pie"), mask_cache_dir=str(tmp_path / "masks"), mask_shape=(h, w))
    items = dataset.items()
    assert [i.item_id for i in items] == ["000000000001", "000000000002"]
    first, second = items
    assert first.source_prompt == "a cat sitting on a wooden bench"
    assert first.target_prompt == "a dog sitting on a wooden bench"  # brackets stripped
    assert first.blend_words == ("cat", "dog") and second.blend_words is None
    assert (first.edit_category, second.edit_category) == (EDITING_TYPES[1], "change_style")
    assert first.extra["editing_type_id"] == 1 and first.extra["editing_prompt_marked"].count("[") == 1
    assert first.extra["mask_rle_key"] != second.extra["mask_rle_key"]  # a changed annotation changes the item
    for item in items:
        png = np.asarray(Image.open(item.mask_path))
        assert Path(item.mask_path).parent == tmp_path / "masks" and set(np.unique(png)) <= {0, 255}
        expected = reference_decode(mapping[item.item_id]["mask"], h, w) * 255
        np.testing.assert_array_equal(png, expected)
    # border rule visible in the written file: frame edited, interior outside the runs not
    png = np.asarray(Image.open(first.mask_path))
    assert png[0, w // 2] == 255 and png[h // 2, 0] == 255 and png[h - 1, w - 1] == 255 and png[10, 20] == 0
    # masks are written once; a second load reuses them
    mtime = Path(first.mask_path).stat().st_mtime_ns
    assert PIEBench(root=str(tmp_path / "pie"), mask_cache_dir=str(tmp_path / "masks"),
                    mask_shape=(h, w)).items()[0].mask_path == first.mask_path
    assert Path(first.mask_path).stat().st_mtime_ns == mtime
    # filtering by editing type, and the no-border variant gets its own files
    only_style = PIEBench(root=str(tmp_path / "pie"), mask_cache_dir=str(tmp_path / "masks"), mask_shape=(h, w),
                          editing_types=[9]).items()
    assert [i.item_id for i in only_style] == ["000000000002"]
    no_border = PIEBench(root=str(tmp_path / "pie"), mask_cache_dir=str(tmp_path / "masks"), mask_shape=(h, w),
                         border_rule=False).items()[0]
    assert no_border.mask_path != first.mask_path
    np.testing.assert_array_equal(np.asarray(Image.open(no_border.mask_path)),
                                  reference_decode(mapping["000000000001"]["mask"], h, w, border=False) * 255)


def test_pie_bench_errors(tmp_path):
    root = tmp_path / "pie"
    mapping = write_pie_fixture(root)
    with pytest.raises(ItemError, match="mapping_file.json not found"):
        PIEBench(root=str(tmp_path / "nowhere"), mask_cache_dir=str(tmp_path / "m")).items()
    del mapping["000000000002"]["original_prompt"]
    mapping["000000000001"]["editing_type_id"] = "12"
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    with pytest.raises(ManifestError, match=r"entry '000000000001': field 'editing_type_id'=12"):
        PIEBench(root=str(root), mask_cache_dir=str(tmp_path / "m"), mask_shape=(24, 32)).items()
    mapping["000000000001"]["editing_type_id"] = 1
    (root / "mapping_file.json").write_text(json.dumps(mapping))
    with pytest.raises(ManifestError, match=r"entry '000000000002': missing field\(s\) \['original_prompt'\]"):
        PIEBench(root=str(root), mask_cache_dir=str(tmp_path / "m"), mask_shape=(24, 32)).items()


# ---------------------------------------------------------------------------------------------- folder


def test_folder_yaml_and_csv(tmp_path):
    root = tmp_path / "mine"
    (root / "horses").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("h1", "h2"):
        Image.new("RGB", (40, 30), (90, 60, 30)).save(root / "horses" / f"{name}.jpg")
    Image.new("L", (40, 30), 255).save(root / "masks" / "h1.png")
    (root / "prompts.yaml").write_text(yaml.safe_dump([
        {"image": "horses/h1.jpg", "source_prompt": "a photo of a horse", "mask": "masks/h1.png",
         "target_prompts": ["a photo of a zebra", "a drawing of a horse in snow"], "category": "horse2zebra"},
        {"image": "horses/h2.jpg", "source_prompt": "a photo of a horse",
         "edits": [{"target_prompt": "a photo of a zebra", "blend_words": ["horse", "zebra"]}]},
    ]))
    items = FolderDataset(root=str(root)).items()
    assert [i.item_id for i in items] == ["horses/h1/0", "horses/h1/1", "horses/h2/0"]
    assert items[0].blend_words == ("horse", "zebra")  # derived: one differing word
    assert items[1].blend_words is None  # several differing words: none derived
    assert items[0].mask_path == str(root / "masks/h1.png") and items[2].mask_path is None
    assert items[0].edit_category == "horse2zebra"
    (root / "prompts.csv").write_text(
        "image,source_prompt,target_prompt,blend_source,blend_target,category\n"
        "horses/h1.jpg,a photo of a horse,a photo of a zebra,horse,zebra,horse2zebra\n"
        "horses/h1.jpg,a photo of a horse,a photo of a donkey,,,\n"
        "horses/h2.jpg,a photo of a horse,a photo of a zebra,,,\n")
    csv_items = FolderDataset(root=str(root), prompts="prompts.csv", name="mine").items()
    assert [(i.item_id, i.target_prompt, i.blend_words) for i in csv_items] == [
        ("horses/h1/0", "a photo of a zebra", ("horse", "zebra")),
        ("horses/h1/1", "a photo of a donkey", ("horse", "donkey")),
        ("horses/h2/0", "a photo of a zebra", ("horse", "zebra"))]


def test_folder_errors(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    with pytest.raises(ManifestError, match="no folder given"):
        FolderDataset(root=None).items()
    (root / "p.csv").write_text("image,target_prompt\na.png,a dog\n")
    with pytest.raises(ManifestError, match=r"p.csv: missing column\(s\) \['source_prompt'\]"):
        FolderDataset(root=str(root), prompts="p.csv").items()
    (root / "p.csv").write_text("image,source_prompt,target_prompt\na.png,a cat,a dog\na.png,a cat,\n")
    with pytest.raises(ManifestError, match=r"p.csv row 3: missing field 'target_prompt'"):
        FolderDataset(root=str(root), prompts="p.csv").items()
    (root / "p.csv").write_text("image,source_prompt,target_prompt\nmissing.png,a cat,a dog\n")
    missing = FolderDataset(root=str(root), prompts="p.csv").items()  # fails at edit time, item by item
    assert [item.image_path for item in missing] == [str(root / "missing.png")]
    (root / "p.yaml").write_text(yaml.safe_dump([{"image": "a.png", "target_prompts": ["a dog"]}]))
    with pytest.raises(ManifestError, match=r"p.yaml entry 0: missing field 'source_prompt'"):
        FolderDataset(root=str(root), prompts="p.yaml").items()


# ---------------------------------------------------------------------------------------------- bad manifests

GOOD_IMAGE = {"id": "a", "file": "a.png", "url": "https://example.org/a.png", "sha256": None,
              "source_prompt": "a photo of a cat", "edits": [{"target_prompt": "a photo of a dog"}]}


def bad_manifest(tmp_path, images, **top) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "version": "1", **top, "images": images}))
    return path


@pytest.mark.parametrize("images, top, message", [
    ([{k: v for k, v in GOOD_IMAGE.items() if k != "source_prompt"}], {},
     r"bad.yaml images\[0\] \(id 'a'\): missing field 'source_prompt'"),
    ([GOOD_IMAGE, dict(GOOD_IMAGE, file="b.png")], {}, r"bad.yaml images\[1\]: duplicate id 'a' \(first at images\[0\]\)"),
    ([GOOD_IMAGE, dict(GOOD_IMAGE, edits=[{"target_prompt": "x"}, {"target_prompt": " "}], id="b", file="b.png")], {},
     r"images\[1\] \(id 'b'\) edits\[1\]: missing field 'target_prompt'"),
    ([{k: v for k, v in GOOD_IMAGE.items() if k != "edits"}], {},
     r"images\[0\] \(id 'a'\): missing field 'target_prompts'"),
    ([dict(GOOD_IMAGE, sha256="abc")], {}, r"images\[0\] \(id 'a'\): field 'sha256'='abc'; expected 64 hex digits"),
    ([dict(GOOD_IMAGE, archive="tar", member="x/a.png")], {}, r"has both 'url' and 'archive'"),
    ([dict({k: v for k, v in GOOD_IMAGE.items() if k != "url"}, archive="tar", member="x")], {},
     r"field 'archive'='tar' is not declared"),
    ([dict(GOOD_IMAGE, file="../escape.png")], {}, r"field 'file'='../escape.png'; expected a relative path"),
    ([dict(GOOD_IMAGE, edits=[{"target_prompt": "x", "blend_words": ["only"]}])], {},
     r"edits\[0\]: field 'blend_words'=\['only'\]"),
    ([dict(GOOD_IMAGE, sourceprompt="typo")], {}, r"unknown field\(s\) \['sourceprompt'\]"),
    ([], {}, r"field 'images' must be a non-empty list"),
])
def test_bad_manifests_name_the_problem(tmp_path, images, top, message):
    path = bad_manifest(tmp_path, images, **top)
    with pytest.raises(ManifestError, match=message) as err:
        load_manifest(path)
    assert str(path) in str(err.value)


def test_manifest_missing_name_and_unknown_dataset(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"version": "1", "images": [GOOD_IMAGE]}))
    with pytest.raises(ManifestError, match=r"m.yaml: missing field 'name'"):
        load_manifest(path)
    with pytest.raises(ManifestError, match=r"unknown dataset 'nope'.*imagenet_r_ti2i"):
        manifest_path("nope")
    with pytest.raises(ItemError, match="a.*not found"):
        ManifestDataset(str(bad_manifest(tmp_path, [GOOD_IMAGE])), data_dir=str(tmp_path / "c")).items()
