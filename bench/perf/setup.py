"""What ``bench perf`` runs on: the model, the method configs (from the registry) and the edit item."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from bench.config import CONF_DIR, group_options
from bench.data.item import EditItem

SD_SHAPED = "sd14_random"  # built in memory by bench.perf.sd_shaped (model=sd14_random saves the same modules to disk)
STEP_FIELDS = ("num_steps",)
SOURCE_PROMPT = "a red circle on a blue background"  # toy-world vocabulary, so every model can tokenize it
TARGET_PROMPT = "a green circle on a blue background"  # same word count: P2P replace mode


def model_choices() -> list[str]:
    return sorted(set(group_options("model")) | {SD_SHAPED})


def compose(overrides: list[str]):
    """The project config composed as ``bench`` would (method presets per model included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    os.environ.setdefault("EDITBENCH_ROOT", str(CONF_DIR.parent))
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def config_model_name(model: str) -> str:
    """The conf/model entry whose method presets apply (sd14_random has SD v1.4's: none)."""
    return "sd14" if model == SD_SHAPED else model


def override_steps(method_cfg: dict[str, Any], steps: int | None, inner_steps: int | None = None) -> dict[str, Any]:
    """Shorter schedules for CPU runs: the step count becomes ``steps``; T_skip keeps its fraction of the
    schedule (EF: 36/100 → round(0.36·steps), at most steps − 1); ``inner_steps`` caps the optimisation
    methods' inner iterations (``num_inner_steps``)."""
    cfg = dict(method_cfg)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps {steps}: expected a positive step count")
        for name in STEP_FIELDS:
            if name in cfg:
                old = int(cfg[name])
                cfg[name] = int(steps)
                if "skip" in cfg:
                    cfg["skip"] = min(int(steps) - 1, int(round(int(cfg["skip"]) * steps / old)))
    if inner_steps is not None and "num_inner_steps" in cfg:
        cfg["num_inner_steps"] = int(inner_steps)
    return cfg


@dataclass
class MethodSpec:
    label: str  # the config name (presets like ddim_ef are their own label)
    method: Any  # the Method instance
    scheduler_cfg: dict[str, Any]
    config: dict[str, Any]  # the method config actually used (after overrides)


def method_spec(label: str, model: str, steps: int | None = None, inner_steps: int | None = None,
                extra: dict[str, Any] | None = None) -> MethodSpec:
    from bench.job_parts import method_from_config

    cfg = compose([f"model={config_model_name(model)}", f"method={label}"])
    plain = OmegaConf.to_container(cfg.method, resolve=True)
    plain = override_steps(plain, steps, inner_steps)
    plain.update(extra or {})
    method, scheduler_cfg = method_from_config(dict(plain))
    return MethodSpec(label, method, scheduler_cfg, plain)


def method_labels(requested: list[str] | None = None) -> list[str]:
    """Every method config of the registry (conf/method/*.yaml), or the requested ones (checked)."""
    available = group_options("method")
    if not requested:
        return available
    unknown = [m for m in requested if m not in available]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; the registry has {available}")
    return list(requested)


def model_config(model: str) -> dict[str, Any]:
    cfg = compose([f"model={model}"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def load_model(model: str, scheduler_cfg: dict[str, Any], device: str = "cpu", dtype: str = "float32"):
    """An EditPipeline for ``--model`` (sd14_random is built in code; the others load from conf/model)."""
    if model == SD_SHAPED:
        from bench.perf.sd_shaped import build_sd14_random_pipeline

        return build_sd14_random_pipeline(scheduler_cfg, device=device, dtype=dtype)
    from bench.models import load_pipeline

    if model not in group_options("model"):
        raise ValueError(f"--model {model!r}: expected one of {model_choices()}")
    return load_pipeline(model_config(model), scheduler_cfg, device=device, dtype=dtype)


def source_image_array(resolution: int) -> np.ndarray:
    """A toy-world-like scene, uint8 (H, W, 3): a red disc on a blue, softly graded background."""
    y, x = np.meshgrid(np.linspace(-1, 1, resolution), np.linspace(-1, 1, resolution), indexing="ij")
    background = np.stack([0.15 + 0.05 * x, 0.25 + 0.05 * y, 0.75 + 0.1 * x * y], axis=-1)
    disk = (((x - 0.1) ** 2 + (y + 0.05) ** 2) < 0.4**2)[..., None]
    image = np.where(disk, np.array([0.85, 0.15, 0.12]), background)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_item(directory: str | Path, resolution: int) -> EditItem:
    """The benchmark's edit item (source PNG written under ``directory``)."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"perf_source_{resolution}.png"
    Image.fromarray(source_image_array(resolution)).save(path)
    return EditItem(item_id="perf/0", image_id="perf", image_path=str(path), source_prompt=SOURCE_PROMPT,
                    target_prompt=TARGET_PROMPT, blend_words=("circle", "circle"), edit_category="colour")


def source_tensor(item: EditItem, resolution: int, device, dtype) -> torch.Tensor:
    """The item's image as the runner loads it: (1, 3, H, W) in [-1, 1]."""
    from bench.data.preprocess import load_image_tensor

    image, _ = load_image_tensor(item.image_path, resolution)
    return image.to(device, dtype)
