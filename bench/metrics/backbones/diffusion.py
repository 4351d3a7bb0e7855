"""The editing pipeline as a metric backbone: NS-LPIPS (StyleDiffusion) inverts each source with it
to get its background mask, so its scores depend on those weights too."""

from __future__ import annotations

from typing import Any, Callable


class PipelineSource:
    """The diffusion pipeline a metric needs: the job's loaded ``EditPipeline``, or a loader called on
    first use (standalone scoring). ``identity`` names the weights, as model id + folder fingerprint."""

    def __init__(self, pipe: Any = None, loader: Callable[[], Any] | None = None) -> None:
        self._pipe, self._loader = pipe, loader

    def get(self) -> Any:
        if self._pipe is None:
            if self._loader is None:
                raise RuntimeError("this metric needs the diffusion pipeline: pass pipe= or pipe_loader= to "
                                   "score_results (the runner passes its loaded EditPipeline)")
            self._pipe = self._loader()
        return self._pipe

    @property
    def identity(self) -> str:
        pipe = self.get()
        return f"diffusion:{pipe.model_id}:{pipe.weights_fingerprint}"
