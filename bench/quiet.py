"""Console noise: ours quiet by default and verbose on request; third-party noise we know to be
harmless filtered at its source, by logger and message, never wholesale.

Known noise (each measured on a toy job, `bench model=toy dataset=toy_shapes method=sdedit metrics=toy`):

- open_clip logs ~10 INFO lines per model creation through the *root* logger (``logging.info``), so
  a filter on the root logger drops INFO records whose source file is inside the open_clip package;
- timm logs INFO for pretrained-file loading and "Missing keys (head.weight, head.bias) ... expected
  if model is being adapted" (the Structure-dist ViT has no head): logger ``timm`` at WARNING;
- torchvision warns that ``pretrained=`` is deprecated when lpips builds its backbone: two
  UserWarnings filtered by their message;
- diffusers / transformers draw "Loading pipeline components" / "Loading weights" progress bars;
- Hydra's launchers log one INFO line per launched job plus the sweep dir ("[HYDRA] Launching jobs ...",
  "[HYDRA] Joblib.Parallel(...)"): loggers ``hydra`` and ``hydra_plugins`` at WARNING (each job ends with
  our own "done: ... results: <dir>" line instead).

``verbose=true`` on the command line (or ``EDITBENCH_VERBOSE=1``) keeps all of it and shows our own
INFO lines (logger ``bench``), which are hidden otherwise.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Iterable

VERBOSE_ENV = "EDITBENCH_VERBOSE"
TRUE = {"1", "true", "yes", "on"}
TORCHVISION_WARNINGS = (r"The parameter 'pretrained' is deprecated", r"Arguments other than a weight enum")
QUIET_LOGGERS = ("timm", "hydra", "hydra_plugins")
ROOT_LOGGING_PACKAGES = ("open_clip",)  # packages that log INFO through the root logger


def wants_verbose(argv: Iterable[str]) -> bool:
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in TRUE:
        return True
    return any(a.lstrip("+").partition("=")[0] == "verbose" and a.partition("=")[2].lower() in TRUE for a in argv)


class _PackageInfoFilter(logging.Filter):
    """Drops records below WARNING emitted from inside the given packages' source trees."""

    def __init__(self, packages: Iterable[str]):
        super().__init__()
        self.markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(m in record.pathname for m in self.markers)


def configure(verbose: bool | None = None) -> bool:
    """Install the filters (idempotent; call again after Hydra has configured logging). Returns verbose.

    The choice is kept in ``EDITBENCH_VERBOSE`` so launcher worker processes make the same one."""
    if verbose is None:
        verbose = wants_verbose(())
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    logging.getLogger("bench").setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        return True
    for message in TORCHVISION_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    root = logging.getLogger()
    if not any(isinstance(f, _PackageInfoFilter) for f in root.filters):
        root.addFilter(_PackageInfoFilter(ROOT_LOGGING_PACKAGES))
    return False


def silence_progress_bars() -> None:
    """diffusers' and transformers' loading progress bars (call where those libraries are imported anyway)."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
