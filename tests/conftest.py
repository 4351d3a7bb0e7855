"""Shared fixtures. The whole suite runs offline: HF_HUB_OFFLINE is set before anything imports the hub
client, and `test_offline.py` proves no hub call can succeed."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
# built models and downloads of this test session live in a throwaway cache (subprocesses inherit it)
import tempfile  # noqa: E402

os.environ.setdefault("EDITBENCH_CACHE", tempfile.mkdtemp(prefix="editbench-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SCHEDULER_OFFSET1 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
SCHEDULER_OFFSET0 = dict(SCHEDULER_OFFSET1, steps_offset=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random pipeline, built once per session and saved in diffusers format."""
    from bench.tiny_random import build_tiny_random

    return build_tiny_random(tmp_path_factory.mktemp("models") / "tiny_random")


@pytest.fixture(scope="session")
def tiny_model_cfg(tiny_model_dir) -> dict:
    return {"name": "tiny_random", "path": str(tiny_model_dir), "local_files_only": True,
            "image_encoder": {"path": None, "subfolder": "image_encoder"}}


@pytest.fixture
def tiny_pipe(tiny_model_cfg):
    """A fresh EditPipeline (DDIM, steps_offset 1) loaded with from_pretrained; counters start at 0."""
    from bench.models import load_pipeline

    torch.manual_seed(0)
    return load_pipeline(tiny_model_cfg, SCHEDULER_OFFSET1)


@pytest.fixture
def source_image() -> torch.Tensor:
    """A smooth deterministic 64×64 test image in [-1, 1], shape (1, 3, 64, 64)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    disk = ((x - 0.2) ** 2 + (y + 0.1) ** 2 < 0.25).float()
    image = torch.stack([0.8 * disk - 0.4 * (1 - disk), 0.5 * x, -0.6 * disk + 0.3 * y])
    return image.clamp(-1, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    gain nothing from more, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(0)


def compose_config(overrides: list[str], results_dir: Path):
    """The real config tree composed with overrides (as `bench` would), results in ``results_dir``."""
    from hydra import compose, initialize_config_dir

    from bench.config import CONF_DIR

    os.environ.setdefault("EDITBENCH_ROOT", str(REPO_ROOT))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"paths.results_dir={results_dir}", "runtime.progress=false",
                                            *overrides], return_hydra_config=True)


# ----------------------------------------------------------------------------------------------
# stand-ins for datasets that cannot be fetched offline, in their real on-disk formats


def write_imagenet_r_tree(parent: Path, size: int = 32) -> Path:
    """An extracted ImageNet-R tree (``<parent>/imagenet-r/<wnid>/<file>``) holding a small JPEG for every
    image of the imagenet_r_ti2i manifest; returns ``parent`` (usable as ``dataset.user_root``)."""
    from PIL import Image

    from bench.data.manifest import load_manifest, manifest_path

    for k, entry in enumerate(load_manifest(manifest_path("imagenet_r_ti2i")).images):
        path = parent / entry.member
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (40 + 7 * k, 200 - 5 * k, 90)).save(path)
    return parent


def write_pie_fixture(root: Path, height=24, width=32) -> dict:
    """A two-entry PIE-Bench root (``mapping_file.json`` + ``annotation_images/``), masks for a
    ``height`` × ``width`` image; returns the mapping."""
    import json

    from PIL import Image

    images = root / "annotation_images"
    mapping = {
        "000000000001": {
            "image_path": "1_change_object_80/000000000001.jpg",
            "original_prompt": "a cat sitting on a wooden bench",
            "editing_prompt": "a [dog] sitting on a wooden bench",
            "editing_instruction": "Change the cat to a dog",
            "editing_type_id": "1",
            "blended_word": "cat dog",
            "mask": [3 * width + 5, 10, 4 * width + 5, 10, 5 * width + 4, 12],
        },
        "000000000002": {
            "image_path": "9_change_style_80/000000000002.jpg",
            "original_prompt": "a photo of a house by a lake",
            "editing_prompt": "a [watercolor painting] of a house by a lake",
            "editing_instruction": "Make it a watercolor painting",
            "editing_type_id": 9,
            "blended_word": "",
            "mask": [0, height * width // 2],  # the top half, touching the frame
        },
    }
    for entry in mapping.values():
        path = images / entry["image_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (120, 30, 200)).save(path)
    (root / "mapping_file.json").write_text(json.dumps(mapping), encoding="utf-8")
    return mapping
