"""Issue 18: results you can trust under hostile or careless use. One test (or a few) per defect; each
checks a property the code before the fix broke (docs/reliability.md lists them with their figures)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, compose_config
from PIL import Image
from test_runner import FAST, ListDataset, dataset_overrides, write_yaml_dataset

from bench import records
from bench.config import ConfigError, instantiate
from bench.data.item import EditItem, ItemError
from bench.edit_job import EditJob
from bench.io import atomic_path, clean_stale_tmp, tmp_prefix, write_json
from bench.job_parts import method_from_config
from bench.runner import run_from_config
from bench.table_files import write_tables
from bench.tables import load_edits, summary_table, to_markdown

SDEDIT = {"_target_": "methods.sdedit.SDEdit", "num_steps": 2, "scheduler": {"steps_offset": 1}}


def sdedit_job(pipe, items, results: Path, **hparams) -> EditJob:
    method, scheduler_cfg = method_from_config({**SDEDIT, **hparams})
    return EditJob(pipe=pipe, method=method, method_label="sdedit", scheduler_cfg=scheduler_cfg,
                   dataset=ListDataset(items), items=items, results_dir=results, seed=0, progress=False)


def noise_png(path: Path, seed: int = 0) -> Path:
    Image.fromarray((np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------- 1


def edit_record(results: Path, key: str, item: str, *, model: str = "m", fingerprint: str = "f" * 16,
                dataset: dict | None = None, hparams: dict | None = None, created: str = "2026-01-01T00:00:00",
                status: str = "ok", psnr: float = 20.0) -> None:
    rec = {"key": key, "status": status, "seed": 0, "created_at": created,
           "method": {"label": "sdedit", "name": "sdedit", "version": "1", "hparams": hparams or {"strength": 0.5}},
           "dataset": dataset or {"name": "folder", "version": "1", "prompts_sha256": "a" * 64},
           "model": {"model_id": model, "weights_fingerprint": fingerprint, "dtype": "float32"},
           "item": {"item_id": item, "image_id": item.split("/")[0], "source_prompt": "a", "target_prompt": "b"}}
    if status == "ok":
        rec.update(cost={"inversion_nfe": 1, "edit_nfe": 1}, quick={"psnr_vs_source": psnr})
    else:
        rec["error"] = {"type": "ItemError", "message": "broken"}
    write_json(records.edit_record_path(results, "sdedit", key), rec)


def test_rows_never_mix_models_or_dataset_contents_and_stale_records_are_excluded(tmp_path):
    results = tmp_path / "results"
    for n, model in enumerate(["sd14", "sd15", "toy"]):  # three models, same method, point and item
        edit_record(results, f"m{n}", "img/0", model=model, psnr=10.0 + n)
    other_folder = {"name": "folder", "version": "1", "prompts_sha256": "b" * 64}  # same default name
    edit_record(results, "other", "img/0", model="toy", dataset=other_folder, psnr=30.0)
    # the item's image changed: a newer record replaces the older one in its row
    edit_record(results, "old", "img/1", model="toy", created="2026-01-01T00:00:00", psnr=99.0)
    edit_record(results, "new", "img/1", model="toy", created="2026-02-01T00:00:00", psnr=14.0)
    table = summary_table(results)
    assert sorted(table["n"]) == [1, 1, 1, 2] and {"dataset", "model"} <= set(table.columns)
    toy = table[(table["model"] == "toy") & (table["n"] == 2)]  # img/0 and the newer img/1 of the first folder
    assert toy["psnr_vs_source ↑"].tolist() == pytest.approx([(12.0 + 14.0) / 2])
    assert set(load_edits(results)["key"]) == {"m0", "m1", "m2", "other", "new"}
    paths = write_tables(results)
    excluded = (results / "tables" / "excluded.csv").read_text()
    assert "old" in excluded and "stale" in excluded and "1 record(s) excluded" in paths["md"].read_text()
    # "best" is per (dataset, model): each model's single row of a dataset has nothing to be compared with
    assert "**" not in to_markdown(table)


# ---------------------------------------------------------------------------------------------- 2


def test_failures_are_keyed_per_point_and_a_success_supersedes_them(tmp_path, tiny_pipe):
    image = tmp_path / "img.png"
    image.write_bytes(b"not a png")
    items = [EditItem("img/0", "img", str(image), "a cat", "a dog")]
    results = tmp_path / "results"
    for strength in (0.5, 0.8):
        assert sdedit_job(tiny_pipe, items, results, strength=strength).run().failed == 1
    assert len(list((results / "edits" / "sdedit").glob("*.json"))) == 2  # one failure per point, none lost
    assert summary_table(results)["failed"].tolist() == [1, 1]
    noise_png(image)  # the input is fixed
    assert sdedit_job(tiny_pipe, items, results, strength=0.5).run().ok == 1
    table = summary_table(results).set_index("point")
    assert (table.loc["strength=0.5", "n"], table.loc["strength=0.5", "failed"]) == (1, 0)
    assert table.loc["strength=0.8", "failed"] == 1


# ---------------------------------------------------------------------------------------------- 3


def test_stale_temp_cleanup_spares_live_writers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = tmp_path / (tmp_prefix(tmp_path / "a.json") + "x")  # this process: alive
    gone = tmp_path / (tmp_prefix(tmp_path / "b.json").replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "x")
    foreign = tmp_path / "c.json.tmp-otherhost-1-x"
    for path in (live, gone, foreign):
        path.write_text("partial")
    assert clean_stale_tmp(tmp_path) == 1
    assert live.exists() and foreign.exists() and not gone.exists()
    old = 2 * 86400
    os.utime(foreign, (foreign.stat().st_atime - old, foreign.stat().st_mtime - old))
    assert clean_stale_tmp(tmp_path) == 1 and not foreign.exists()


def test_three_concurrent_commands_on_one_results_dir(tmp_path):
    """Two single jobs and a joblib multirun (two workers) start together on one results dir: every job
    has its own summary, no temp file is left, every record is complete."""
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=1)
    results = tmp_path / "results"
    base = [sys.executable, "-m", "bench.cli", "model=tiny_random", "method=sdedit", "method.num_steps=3",
            *dataset_overrides(data), f"paths.results_dir={results}", "runtime.progress=false",
            "runtime.num_threads=1", "++hydra.callbacks.aggregate.report=false"]
    commands = [base + ["method.strength=0.7"], base + ["method.strength=0.8"],
                base[:3] + ["-m", "launcher=joblib"] + base[3:] + ["method.strength=0.5,0.6"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(c, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    errors = [p.communicate(timeout=400)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in errors]
    summaries = [json.loads(p.read_text()) for p in sorted(results.glob("**/summary.json"))]
    assert len(summaries) == 4 and all(s["ok"] + s["skipped"] == 1 for s in summaries)
    assert len(list((results / "runs").glob("*/summary.json"))) == 2
    assert len(list((results / "multirun").glob("*/*/summary.json"))) == 2
    assert not [p for p in results.rglob("*") if ".tmp-" in p.name]
    assert sorted(summary_table(results)["point"]) == [f"strength={s}" for s in (0.5, 0.6, 0.7, 0.8)]


# ---------------------------------------------------------------------------------------------- 4


@pytest.mark.parametrize("field,value", [("name", "../escape"), ("name", "/abs"), ("filename", "../../x.tar"),
                                         ("filename", "/tmp/x.tar")])
def test_manifest_names_cannot_leave_the_cache(tmp_path, field, value):
    from bench.data.manifest import ManifestError, load_manifest

    manifest = {"name": "ok", "version": "1",
                "archives": {"a": {"url": "https://example.org/a.tar", "sha256": None}},
                "images": [{"id": "x", "file": "x.png", "archive": "a", "member": "x.png",
                            "source_prompt": "a cat", "target_prompts": ["a dog"]}]}
    if field == "name":
        manifest["name"] = value
    else:
        manifest["archives"]["a"]["filename"] = value
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(ManifestError, match=rf"field '{field}'=.*expected a plain name"):
        load_manifest(path)


# ---------------------------------------------------------------------------------------------- 5


def test_dotted_paths_from_config_are_allow_listed(tmp_path):
    from bench.models import resolve_model_path

    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match=r"model.build='os:system'"):
        resolve_model_path({"path": str(tmp_path / "model"), "build": "os:system"})
    with pytest.raises(ConfigError, match=r"method.helper._target_='os.system'"):
        instantiate({**SDEDIT, "scheduler": None, "helper": {"_target_": "os.system", "command": f"touch {marker}"}},
                    what="method")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- 6


def test_16_bit_grayscale_is_scaled_and_constant_sources_are_flagged(tmp_path, tiny_pipe):
    from bench.data.preprocess import load_image_tensor

    levels = np.tile(np.arange(0, 256, 4, dtype=np.uint16), (64, 1))  # a horizontal ramp
    Image.fromarray(levels.astype(np.uint8)).save(tmp_path / "8bit.png")
    Image.fromarray(levels * 257).save(tmp_path / "16bit.png")  # the same ramp at 16 bits
    assert Image.open(tmp_path / "16bit.png").mode.startswith("I")
    eight, sixteen = (load_image_tensor(tmp_path / name, 64)[0] for name in ("8bit.png", "16bit.png"))
    assert float(sixteen.amax() - sixteen.amin()) > 1.9 and np.array_equal(eight.numpy(), sixteen.numpy())
    Image.fromarray(np.zeros((8, 8), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ItemError, match="floating-point"):
        load_image_tensor(tmp_path / "float.tiff", 64)

    Image.new("RGB", (32, 32), (90, 90, 90)).save(tmp_path / "flat.png")
    items = [EditItem("flat/0", "flat", str(tmp_path / "flat.png"), "a cat", "a dog")]
    assert sdedit_job(tiny_pipe, items, tmp_path / "results").run().ok == 1
    (rec,) = records.iter_edit_records(tmp_path / "results")
    assert any("constant" in w for w in rec["warnings"])


# ---------------------------------------------------------------------------------------------- 7


def test_an_invalid_sweep_point_fails_alone_and_tables_are_built(tmp_path):
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=1)
    result = subprocess.run([sys.executable, "-m", "bench.cli", "-m", *FAST, *dataset_overrides(data),
                             f"paths.results_dir={tmp_path / 'results'}", "method.strength=1.5,0.5",
                             "++hydra.callbacks.aggregate.report=false"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "results").glob("multirun/*/*/summary.json")}
    assert "SDEdit.strength=1.5" in summaries["0"]["error"]["message"] and summaries["1"]["ok"] == 1
    assert (tmp_path / "results" / "tables" / "summary.md").is_file()


def test_a_missing_folder_image_fails_its_items_only(tmp_path, tiny_pipe):
    from bench.data.folder import FolderDataset

    noise_png(tmp_path / "a.png")
    (tmp_path / "p.csv").write_text("image,source_prompt,target_prompt\na.png,a cat,a dog\ngone.png,a cat,a dog\n")
    items = FolderDataset(root=str(tmp_path), prompts="p.csv").items()
    summary = sdedit_job(tiny_pipe, items, tmp_path / "results").run()
    assert (summary.ok, summary.failed) == (1, 1) and "gone.png" in summary.failures[0]["error"]


# ---------------------------------------------------------------------------------------------- 8


def test_prompts_past_the_text_window_are_recorded_or_refused(tiny_pipe):
    from bench.job_checks import prompt_warnings

    long = "a photo of a cat " + "very " * 80 + "sitting on a mat"
    warned = prompt_warnings(tiny_pipe.tokenizer, EditItem("x/0", "x", "x.png", long, "a dog"))
    assert len(warned) == 1 and "source_prompt" in warned[0] and "77" in warned[0]
    with pytest.raises(ItemError, match="blend word 'mat' lies past"):
        prompt_warnings(tiny_pipe.tokenizer, EditItem("x/0", "x", "x.png", long, long.replace("mat", "rug"),
                                                      blend_words=("mat", "rug")))
    assert prompt_warnings(tiny_pipe.tokenizer, EditItem("x/0", "x", "x.png", "a cat", "a dog",
                                                         blend_words=("cat", "dog"))) == []


def test_hyperparameter_types_are_checked():
    with pytest.raises(ConfigError, match=r"method.num_inner_steps=4.5: expected an integer"):
        method_from_config({"_target_": "methods.null_text_p2p.NullTextP2P", "num_inner_steps": 4.5,
                            "scheduler": {}})
    with pytest.raises(ConfigError, match=r"method.strength='abc': expected a number"):
        method_from_config({**SDEDIT, "strength": "abc"})


def test_unwritable_results_dir_fails_before_the_model_loads(tmp_path, monkeypatch):
    import bench.job_setup

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(bench.job_setup, "load_pipeline", no_model)
    (tmp_path / "file").write_text("")
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=1)
    cfg = compose_config(FAST + dataset_overrides(data), tmp_path / "file" / "results")
    with pytest.raises(ConfigError, match="is not writable"):
        run_from_config(cfg)


def test_weights_fingerprint_covers_every_byte_and_is_cached(tmp_path, monkeypatch):
    import bench.fingerprint
    from bench.fingerprint import fingerprint_dir

    weights = tmp_path / "model" / "unet.bin"
    weights.parent.mkdir()
    size = 65 << 20  # larger than the old 64 MiB whole-file limit
    with open(weights, "wb") as handle:
        handle.truncate(size)
    cache = tmp_path / "digests.json"
    base = fingerprint_dir(weights.parent, cache=cache)
    with open(weights, "r+b") as handle:  # a fine-tune that differs only in the middle
        handle.seek(size // 2)
        handle.write(b"\x01")
    tuned = fingerprint_dir(weights.parent, cache=cache)
    assert tuned != base
    hashed = []
    monkeypatch.setattr(bench.fingerprint, "file_sha256", lambda path: hashed.append(path) or "x")
    assert fingerprint_dir(weights.parent, cache=cache) == tuned and hashed == []  # digest reused


def test_damaged_cached_inversion_is_recomputed(tmp_path, tiny_pipe, caplog):
    image = noise_png(tmp_path / "img.png")
    items = [EditItem("img/0", "img", str(image), "a cat", "a dog")]
    results = tmp_path / "results"
    sdedit_job(tiny_pipe, items, results, strength=0.5).run()
    (inversion,) = (results / "inversions").rglob("*.safetensors")
    raw = bytearray(inversion.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    raw[header:] = bytes(len(raw) - header)  # tensor data zeroed, header intact
    inversion.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        summary = sdedit_job(tiny_pipe, items, results, strength=0.8).run()
    assert (summary.inversions_loaded, summary.inversions_computed) == (0, 1)
    assert "does not match its recorded digest" in caplog.text


def test_results_are_readable_as_the_umask_allows(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "r.json") as tmp:
            Path(tmp).write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_symlinks_leaving_a_folder_dataset_are_refused(tmp_path):
    from bench.data.folder import FolderDataset
    from bench.data.manifest import ManifestError

    outside = noise_png(tmp_path / "secret.png")
    root = (tmp_path / "set").mkdir() or tmp_path / "set"
    (root / "link.png").symlink_to(outside)
    (root / "p.csv").write_text("image,source_prompt,target_prompt\nlink.png,a cat,a dog\n")
    with pytest.raises(ManifestError, match="outside the dataset folder"):
        FolderDataset(root=str(root), prompts="p.csv").items()


# ---------------------------------------------------------------------------------------------- 9


def test_method_source_change_needs_a_version_bump(tmp_path):
    from bench.method_versions import VERSIONS_FILE, current_state, problems

    assert problems(REPO_ROOT) == []
    shutil.copytree(REPO_ROOT / "methods", tmp_path / "methods")
    module = tmp_path / "methods" / "sdedit.py"
    module.write_text(module.read_text().replace("strength: float = 0.8", "strength: float = 0.7"))
    (changed,) = problems(tmp_path)
    from methods.sdedit import SDEdit

    assert "methods.sdedit" in changed and f"SDEdit.version='{SDEdit.version}' did not" in changed
    bumped = str(int(SDEdit.version) + 1)
    module.write_text(module.read_text().replace(f'version = "{SDEdit.version}"', f'version = "{bumped}"'))
    assert "versions bumped" in problems(tmp_path)[0]
    write_json(tmp_path / VERSIONS_FILE, current_state(tmp_path))
    assert problems(tmp_path) == []
    steps = tmp_path / "methods" / "steps.py"  # a shared module counts for every method importing it
    steps.write_text(steps.read_text() + "\n# changed\n")
    assert any("methods.sdedit" in p for p in problems(tmp_path))


# ---------------------------------------------------------------------------------------------- issue 19.2


def test_no_import_cycles_in_bench_and_methods(tmp_path):
    from bench.imports import cycles, import_graph

    assert cycles(import_graph(REPO_ROOT)) == []
    for package in ("bench", "methods"):  # the check itself sees a cycle made by a lazy import
        (tmp_path / package).mkdir()
    (tmp_path / "bench" / "a.py").write_text("import bench.b\n")
    (tmp_path / "bench" / "b.py").write_text("def f():\n    from bench.a import x\n")
    assert cycles(import_graph(tmp_path)) == [["bench.a", "bench.b"]]


def test_keys_do_not_depend_on_where_the_files_are():
    """Two checkouts of the same item (files under different roots, e.g. the toy world's union mask path in
    ``extra``) must give the same edit key: the key seeds the edit's generator, so a path in it would make
    results depend on the checkout location. Content still counts: another non-path ``extra`` value changes it."""
    from bench.keys import item_identity

    def item(root: str, **extra) -> EditItem:
        return EditItem(item_id="i0", image_id="img0", image_path=f"{root}/src.png", source_prompt="a red circle",
                        target_prompt="a blue circle", mask_path=f"{root}/mask.png",
                        extra={"union_mask_path": f"{root}/union.png", "edited_attribute": "colour", **extra})

    assert item_identity(item("/a/checkout")) == item_identity(item("/elsewhere"))
    assert "union_mask_path" not in json.dumps(item_identity(item("/a")))
    assert item_identity(item("/a")) != item_identity(item("/a", edited_attribute="shape"))
