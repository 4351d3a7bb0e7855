"""The Method contract.

A method is a dataclass whose fields are its hyperparameters. It does no file I/O: the runner
owns caching, saving and cost accounting. A method has two stages:

- ``invert(pipe, image, source_prompt, generator) -> Inversion``: everything that depends only on
  the source image, the source prompt and the *inversion* hyperparameters. The runner caches it
  (safetensors) and reuses it for every edit point and target prompt that shares it.
- ``edit(pipe, inversion, item, generator) -> image``: produce the edited image for one
  ``EditItem`` (its target prompt, blend words, ...), in [-1, 1], shape (3, H, W).

``inversion_fields`` names the hyperparameters that change the inversion; everything else is an
edit hyperparameter. The cache key of an inversion uses only those, so a grid over edit
hyperparameters costs one inversion per image.

UNet evaluations are counted by the pipeline (``EditPipeline.counter``), not by the method, so a
method cannot under-report its cost.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:  # imported for type hints only
    from bench.data.item import EditItem
    from bench.models import EditPipeline


class HyperparameterError(ValueError):
    """A hyperparameter value outside its documented range."""


@dataclass
class Inversion:
    """The cached result of ``Method.invert``: tensors plus JSON-serialisable metadata.

    Saved with safetensors (tensors) and the metadata as a JSON string in the safetensors header.
    Tensors are kept on CPU when stored; ``to(device)`` moves them back for editing.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Inversion":
        moved = {}
        for name, tensor in self.tensors.items():
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            moved[name] = tensor.to(device)
        return Inversion(moved, dict(self.meta))

    def save(self, path: str) -> None:
        """Write atomically: a crash leaves either the old file or no file, never half of one."""
        from safetensors.torch import save_file

        from bench.io import atomic_path

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"meta": json.dumps(self.meta, sort_keys=True)})

    @classmethod
    def load(cls, path: str) -> "Inversion":
        from safetensors import safe_open

        tensors = {}
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
        return cls(tensors, meta)


def check_range(owner: object, name: str, low: float, high: float, *, low_open: bool = False) -> None:
    """Raise HyperparameterError naming ``<Class>.<name>`` when the value is outside [low, high]."""
    value = getattr(owner, name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise HyperparameterError(f"{type(owner).__name__}.{name}={value!r}: expected a number in "
                                  f"{'(' if low_open else '['}{low}, {high}]")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise HyperparameterError(
            f"{type(owner).__name__}.{name}={value!r} is out of range: expected a value in {bracket}{low}, {high}]"
        )


@dataclass
class Method:
    """Base class. Subclasses are dataclasses whose fields are the hyperparameters.

    Class attributes a subclass sets:
      name:             the registry name (= the config file name in ``conf/method/``).
      version:          bump when outputs change for the same hyperparameters (part of every cache key).
      inversion_fields: hyperparameters that change ``invert``'s output.
      stochastic:       True when the output depends on the seed (report mean ± std over seeds).
      uses_image_encoder: True when the method calls ``pipe.get_image_encoder()`` (the job's preflight
                        then checks the model's image encoder weights too).
    """

    name: ClassVar[str] = "base"
    version: ClassVar[str] = "0"
    inversion_fields: ClassVar[tuple[str, ...]] = ()
    stochastic: ClassVar[bool] = False
    uses_image_encoder: ClassVar[bool] = False

    def hparams(self) -> dict[str, Any]:
        """All hyperparameters as a plain dict (JSON-serialisable)."""
        return _plain(dataclasses.asdict(self))

    def inversion_hparams(self) -> dict[str, Any]:
        every = self.hparams()
        return {k: every[k] for k in self.inversion_fields}

    def invert(
        self, pipe: "EditPipeline", image: torch.Tensor, source_prompt: str, generator: torch.Generator
    ) -> Inversion:
        raise NotImplementedError

    def edit(
        self, pipe: "EditPipeline", inversion: Inversion, item: "EditItem", generator: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError

    # item batching ------------------------------------------------------------------------
    def invert_batch(self, pipe: "EditPipeline", images: torch.Tensor, source_prompts: list[str],
                     generators: list[torch.Generator]) -> list[Inversion]:
        """Invert B items at once: ``images`` (B,3,H,W), one source prompt and one generator per item.

        The default runs ``invert`` item by item. A method whose steps batch across items overrides this
        (and ``edit_batch``) so that every UNet call carries all B items' rows; randomness is drawn per
        item from that item's generator, so an item's result does not depend on B or on its neighbours."""
        return [self.invert(pipe, images[i:i + 1], prompt, generator)
                for i, (prompt, generator) in enumerate(zip(source_prompts, generators))]

    def edit_batch(self, pipe: "EditPipeline", inversions: list[Inversion], items: list["EditItem"],
                   generators: list[torch.Generator]) -> torch.Tensor:
        """Edited images (B,3,H,W) in [-1, 1]; the default runs ``edit`` item by item."""
        return torch.stack([self.edit(pipe, inversion, item, generator)
                            for inversion, item, generator in zip(inversions, items, generators)])

    def declared_nfe(self, item: "EditItem") -> tuple[int, int] | None:
        """(inversion NFE, edit NFE) of one item by the formula in the method's docs, or None where the
        cost depends on the data (an optimisation's early stop). The contract test
        (tests/test_method_contract.py) holds the pipeline's counted NFE to it."""
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ItemBatchedMethod(Method):
    """A method whose batch forms are the primary ones: ``invert``/``edit`` are ``invert_batch``/``edit_batch``
    at B = 1, so a single item and a batch run the same code (the contract test compares the two)."""

    def invert(self, pipe, image, source_prompt, generator) -> Inversion:
        return self.invert_batch(pipe, image, [source_prompt], [generator])[0]

    def edit(self, pipe, inversion, item, generator) -> torch.Tensor:
        return self.edit_batch(pipe, [inversion], [item], [generator])[0]


def stack_tensors(inversions: list[Inversion], name: str) -> torch.Tensor:
    """One stored tensor of every item, concatenated along the batch dimension (item-major)."""
    return torch.cat([inversion.tensors[name] for inversion in inversions])


def target_rows(latents: torch.Tensor, batch: int) -> torch.Tensor:
    """Each item's last branch — the target — of item-major edit latents with the same branches per item."""
    rows = latents.shape[0] // batch
    return latents[rows - 1::rows]


def split_inversions(tensors: dict[str, torch.Tensor], meta: dict[str, Any], batch: int) -> list[Inversion]:
    """B per-item inversions from batched tensors whose first dimension is B·k (item-major)."""
    return [Inversion({name: tensor.chunk(batch)[b].clone() for name, tensor in tensors.items()}, dict(meta))
            for b in range(batch)]
