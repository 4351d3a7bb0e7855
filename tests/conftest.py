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

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from bench import records  # noqa: E402
from bench.data.base import Dataset  # noqa: E402
from bench.io import write_json  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SCHEDULER_OFFSET1 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
SCHEDULER_OFFSET0 = dict(SCHEDULER_OFFSET1, steps_offset=0)
PROMPT = "a red circle on a blue background"  # the null-text / StyleDiffusion tests' prompt


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
def tiny_pipe_float64(tiny_pipe):
    """``tiny_pipe`` in float64: for batch-vs-single comparisons of loops that amplify float32 rounding (an
    optimisation or guidance step) beyond what a wrong per-item result would be told apart from."""
    for module in (tiny_pipe.unet, tiny_pipe.vae, tiny_pipe.text_encoder):
        module.double()
    tiny_pipe.dtype = torch.float64
    return tiny_pipe

@pytest.fixture
def pipe(tiny_model_cfg):
    """The tiny pipeline with the hand-built DDIM (steps_offset 0) the NTI configs use."""
    from bench.models import load_pipeline

    return load_pipeline(tiny_model_cfg, SCHEDULER_OFFSET0)


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


# ----------------------------------------------------------------------------------------------
# small datasets and hand-written records


def write_yaml_dataset(root: Path, n_images: int, prompts_per_image: int = 1) -> Path:
    """A small EF-format dataset of generated images (so tests don't depend on shared data)."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n_images):
        array = (rng.random((48, 80, 3)) * 255).astype(np.uint8)  # non-square: exercises the centre crop
        Image.fromarray(array).save(root / f"img_{i}.png")
        entries.append({"init_img": f"/img_{i}.png", "source_prompt": f"a photo of a cat number {i}",
                        "target_prompts": [f"a photo of a dog number {i} v{k}" for k in range(prompts_per_image)]})
    (root / "prompts.yaml").write_text(yaml.safe_dump(entries))
    return root


def dataset_overrides(root: Path) -> list[str]:
    return ["dataset=ef_examples", f"dataset.root={root}", "dataset.prompts_file=prompts.yaml"]


class ListDataset(Dataset):
    """A dataset of the given ``EditItem`` list."""

    name, version = "inline", "1"

    def __init__(self, items):
        self._items = items

    def items(self):
        return self._items


def add_edit(results: Path, key: str, method: str, item: str, seed: int = 0, hparams: dict | None = None,
             stochastic: bool = False, status: str = "ok", dataset: str = "toyset", nfe: int = 10,
             psnr: float = 20.0, image: bool = False) -> None:
    rec = {"key": key, "status": status, "seed": seed,
           "method": {"label": method, "name": method, "hparams": hparams or {}, "stochastic": stochastic},
           "dataset": {"name": dataset}, "item": {"item_id": item, "image_id": item.split("/")[0],
                                                  "source_prompt": "a cat", "target_prompt": "a dog"}}
    if status == "ok":
        rec["cost"] = {"inversion_nfe": nfe // 2, "edit_nfe": nfe - nfe // 2, "inversion_seconds": 1.0,
                       "edit_seconds": 1.0}
        rec["quick"] = {"psnr_vs_source": psnr}
        rec["files"] = {"edited": f"edits/{method}/{key}.png", "source": f"sources/{item.split('/')[0]}.png"}
        if image:
            for rel, value in ((rec["files"]["edited"], 200), (rec["files"]["source"], 40)):
                (results / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(results / rel)
    else:
        rec["error"] = {"type": "ValueError", "message": "boom"}
    write_json(records.edit_record_path(results, method, key), rec)


def add_metric(results: Path, key: str, metric_id: str, value: float | None, scale: float = 1.0,
               higher: bool = True) -> None:
    write_json(records.metric_record_path(results, metric_id, key),
               {"edit_key": key, "metric_id": metric_id, "value": value, "display_scale": scale,
                "higher_is_better": higher})


@pytest.fixture(scope="module")
def contract_pipe(tiny_model_cfg):
    """The tiny pipeline for the method contract (tests/method_contract.py), hand-built DDIM (offset 0)."""
    from bench.models import load_pipeline

    return load_pipeline(tiny_model_cfg, SCHEDULER_OFFSET0)


@pytest.fixture(scope="module")
def contract_item(contract_pipe, tmp_path_factory):
    """One written edit item and its source tensor at the contract pipeline's resolution."""
    from bench.perf.setup import source_tensor, write_item

    item = write_item(tmp_path_factory.mktemp("contract-item"), contract_pipe.resolution)
    return item, source_tensor(item, contract_pipe.resolution, contract_pipe.device, contract_pipe.dtype)
