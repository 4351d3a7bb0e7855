"""The backbone contract, weight resolution helpers and the per-call ``BackboneStore``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from bench.errors import ModelNotFoundError

if TYPE_CHECKING:  # torch is imported where networks are loaded, not where weights are looked for
    import torch

FETCH_HINT = "bench weights fetch --metrics {metric_set}"
FORWARD_CALLS: Counter = Counter()  # process-wide forward passes per backbone identity (tests read it)


class WeightsNotFoundError(ModelNotFoundError):
    """Evaluator weights could not be resolved; the message names the model, the paths searched and the fix."""


def downloads_allowed() -> bool:
    """False when the environment says we are offline (the test suite, offline cluster nodes)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "EDITBENCH_OFFLINE"):
        if os.environ.get(var, "0").strip().lower() in {"1", "true", "yes", "on"}:
            return False
    return True


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors (safetensors) or .pth/.pt/.bin (``torch.load(weights_only=True)``)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name → tensor), got {type(state).__name__}")
    return state


def hf_cached_file(repo_id: str, filenames: Iterable[str], cache_dir: str | None = None,
                   revision: str | None = None) -> str | None:
    """The first of ``filenames`` present in the HF cache for ``repo_id`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


@dataclass
class Resolved:
    """Where a backbone's weights are: ``path`` (a file or folder), how they were found, and the
    path-independent identity recorded in metric records and keys."""

    path: str
    source: str  # "config" | "cache" | "download"
    identity: str


class Backbone:
    """One evaluator network: how to find its weights and how to load it."""

    kind = "backbone"
    metric_set = "default"  # the conf/metrics set whose `bench weights fetch --metrics` fetches it

    def key(self) -> tuple:
        """Equal keys = the same loaded object (shared between metrics in one scoring call)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def searched(self) -> list[str]:
        """Human-readable list of the places looked at (for errors and `bench weights fetch`)."""
        raise NotImplementedError

    def find(self) -> Resolved | None:
        """Local path or library cache; never the network."""
        raise NotImplementedError

    def download(self) -> Resolved:
        raise NotImplementedError

    def load(self, resolved: Resolved, device: torch.device | str) -> Any:
        raise NotImplementedError

    def watched_modules(self, loaded: Any) -> list[torch.nn.Module]:
        """The modules whose forward passes are counted (one count per batch forward)."""
        import torch

        return [loaded] if isinstance(loaded, torch.nn.Module) else []

    # ------------------------------------------------------------------------------------------
    def resolve(self, allow_download: bool | None = None) -> Resolved:
        found = self.find()
        if found is not None:
            return found
        if allow_download is None:
            allow_download = downloads_allowed()
        if allow_download:
            try:
                return self.download()
            except Exception as err:  # network errors come in many types; report them uniformly
                raise self.missing(f"download failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        raise self.missing("offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / EDITBENCH_OFFLINE set), so no download was tried")

    def missing(self, why: str) -> WeightsNotFoundError:
        lines = "\n".join(f"    - {s}" for s in self.searched())
        return WeightsNotFoundError(
            f"Weights for evaluator backbone {self.describe()} were not found: {why}.\n"
            f"  searched:\n{lines}\n"
            f"  fix: run `{FETCH_HINT.format(metric_set=self.metric_set)}` on a machine with internet and copy the caches (TORCH_HOME, HF_HOME) "
            f"here, or set an explicit local path in the metric config (conf/metrics/*.yaml)."
        )


def explicit_path(path: str | Path | None) -> Path | None:
    """A configured local path with ``~`` expanded, or None when none is configured."""
    if not path:
        return None
    return Path(os.path.expanduser(str(path)))


# ----------------------------------------------------------------------------------------------
# the per-call store

class BackboneStore:
    """Loads each backbone once (per store) and counts forward passes of what it loaded."""

    def __init__(self, device: torch.device | str = "cpu", allow_download: bool | None = None):
        import torch

        self.device = torch.device(device)
        self.allow_download = allow_download
        self._loaded: dict[tuple, tuple[Resolved, Any, list]] = {}
        self.forward_calls: Counter = Counter()
        self.loads: Counter = Counter()

    def resolve(self, backbone: Backbone) -> Resolved:
        entry = self._loaded.get(backbone.key())
        return entry[0] if entry else backbone.resolve(self.allow_download)

    def get(self, backbone: Backbone) -> Any:
        key = backbone.key()
        if key not in self._loaded:
            resolved = backbone.resolve(self.allow_download)
            loaded = backbone.load(resolved, self.device)
            label = resolved.identity
            handles = []
            for module in backbone.watched_modules(loaded):
                def count(_module, _args, label=label):
                    self.forward_calls[label] += 1
                    FORWARD_CALLS[label] += 1
                handles.append(module.register_forward_pre_hook(count))
            self._loaded[key] = (resolved, loaded, handles)
            self.loads[label] += 1
        return self._loaded[key][1]

    def release(self, backbone: Backbone) -> None:
        entry = self._loaded.pop(backbone.key(), None)
        if entry:
            for handle in entry[2]:
                handle.remove()

    def loaded_identities(self) -> list[str]:
        return [entry[0].identity for entry in self._loaded.values()]
