"""Model loading and the ``EditPipeline`` every method works with.

Loading goes through the real diffusers/transformers ``from_pretrained(id_or_local_path)`` path for
every model (SD v1.4, the toy world, the tiny random test pipeline). The scheduler is *not* taken
from the checkpoint: each method config names an explicit DDIM scheduler config (steps_offset,
beta schedule, set_alpha_to_one), built by ``build_scheduler`` and recorded in every result.

UNet evaluations are counted by hooks on the UNet (``UNetCounter``), so cost accounting does not
depend on methods reporting it themselves.
"""

from __future__ import annotations

import importlib
import inspect
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.errors import ModelNotFoundError
from bench.fingerprint import fingerprint_dir
from bench.weight_locations import hf_cache_dir

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


REFERENCE_DTYPE = "reference"


def resolve_dtype(name: str) -> torch.dtype:
    """``reference`` = float32 weights, with fp16 autocast on CUDA where the references used it
    (``EditPipeline.reference_precision``; methods.steps.reference_autocast)."""
    if name == REFERENCE_DTYPE:
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"runtime.dtype={name!r}: expected one of {sorted(DTYPES) + [REFERENCE_DTYPE]}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"runtime.device={name!r} but no CUDA device is available; use runtime.device=cpu")
    return torch.device(name)


def import_object(dotted: str, where: str = "model.build") -> Any:
    """'package.module:attr' or 'package.module.attr' → the object (allow-listed: ``bench.``/``methods.``)."""
    from bench.config import check_dotted_path

    check_dotted_path(dotted, where)
    module_name, _, attr = dotted.partition(":") if ":" in dotted else dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


# ----------------------------------------------------------------------------------------------
# scheduler


def build_scheduler(config: dict[str, Any]):
    """A diffusers DDIMScheduler from an explicit config dict (keys of DDIMScheduler.__init__)."""
    from diffusers import DDIMScheduler

    allowed = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"scheduler config has unknown keys {unknown}; DDIMScheduler accepts {sorted(allowed)}")
    return DDIMScheduler(**config)


def scheduler_record(scheduler) -> dict[str, Any]:
    """The scheduler config as plain data, for result records."""
    return {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}


# ----------------------------------------------------------------------------------------------
# cost accounting


@dataclass
class UNetCounter:
    """Counts UNet calls by batch size, and backward passes through the UNet.

    nfe = Σ_b b · calls[b] (per-sample network function evaluations); the perf tool uses the
    per-batch-size histogram to compute the overhead ratio wall / Σ_b calls[b] · t_UNet(b).
    """

    forward_calls: Counter = field(default_factory=Counter)
    backward_calls: Counter = field(default_factory=Counter)

    @property
    def nfe(self) -> int:
        return sum(b * n for b, n in self.forward_calls.items())

    @property
    def nfe_backward(self) -> int:
        return sum(b * n for b, n in self.backward_calls.items())

    def snapshot(self) -> dict[str, Any]:
        return {"nfe": self.nfe, "nfe_backward": self.nfe_backward,
                "forward_calls_by_batch": {str(b): n for b, n in sorted(self.forward_calls.items())},
                "backward_calls_by_batch": {str(b): n for b, n in sorted(self.backward_calls.items())}}

    def since(self, before: dict[str, Any]) -> dict[str, Any]:
        """The counts accumulated since ``before = snapshot()``."""
        now = self.snapshot()
        out: dict[str, Any] = {"nfe": now["nfe"] - before["nfe"],
                               "nfe_backward": now["nfe_backward"] - before["nfe_backward"]}
        for key in ("forward_calls_by_batch", "backward_calls_by_batch"):
            diff = {b: n - before[key].get(b, 0) for b, n in now[key].items()}
            out[key] = {b: n for b, n in diff.items() if n}
        return out

    def attach(self, unet: torch.nn.Module) -> None:
        def before_forward(module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            self.forward_calls[int(sample.shape[0])] += 1

        def after_forward(module, args, kwargs, output):
            sample_out = output.sample if hasattr(output, "sample") else output[0]
            if sample_out.requires_grad:
                batch = int(sample_out.shape[0])
                sample_out.register_hook(lambda grad: self.backward_calls.update([batch]))

        unet.register_forward_pre_hook(before_forward, with_kwargs=True)
        unet.register_forward_hook(after_forward, with_kwargs=True)


# ----------------------------------------------------------------------------------------------
# the pipeline object methods use


@dataclass
class EditPipeline:
    """The diffusers components plus the helpers every method needs (no sampling logic here)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    model_id: str
    weights_fingerprint: str
    image_encoder: Any = None
    image_encoder_loader: Callable[[], Any] | None = None
    counter: UNetCounter = field(default_factory=UNetCounter)
    reference_precision: bool = False  # runtime.dtype=reference: fp16 autocast where the references used it
    _prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.counter.attach(self.unet)

    # geometry -----------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def resolution(self) -> int:
        return self.latent_size * self.vae_scale_factor

    # text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text hidden states (B, 77, D), padded to max length as SD does; cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)
            for prompt, h in zip(missing, hidden):
                self._prompt_cache[prompt] = h
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def token_ids(self, prompt: str) -> list[int]:
        """Token ids of a prompt without padding (start and end tokens included)."""
        return self.tokenizer(prompt).input_ids

    # images -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1,1] → latents · scaling_factor (posterior mean = mode, as the references)."""
        image = image.to(device=self.device, dtype=self.vae.dtype)
        latents = self.vae.encode(image).latent_dist.mean
        return (latents * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """latents → (B,3,H,W) in [-1,1] (clamped)."""
        latents = latents.to(dtype=self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample.clamp(-1, 1).float()

    # networks -----------------------------------------------------------------------------
    def unet_eps(self, latents: torch.Tensor, t: int | torch.Tensor, text_embeddings: torch.Tensor,
                 **kwargs) -> torch.Tensor:
        """ε_θ(x_t, t, c) for a batch (one counted UNet call)."""
        return self.unet(latents, t, encoder_hidden_states=text_embeddings, **kwargs).sample

    def get_image_encoder(self):
        """The CLIP vision tower (StyleDiffusion), loaded on first use."""
        if self.image_encoder is None:
            if self.image_encoder_loader is None:
                raise ModelNotFoundError(f"model {self.model_id!r} has no image_encoder configured "
                                         "(set model.image_encoder in the model config)")
            self.image_encoder = self.image_encoder_loader()
        return self.image_encoder

    def identity(self) -> dict[str, Any]:
        """What identifies the model in cache keys and records."""
        return {"model_id": self.model_id, "weights_fingerprint": self.weights_fingerprint,
                "dtype": str(self.dtype).replace("torch.", "") + ("+reference-autocast" if self.reference_precision else "")}


# ----------------------------------------------------------------------------------------------
# loading


def _missing_weights(model_id: str, revision: str | None, prefetch: str, err: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Model weights for {model_id!r} (revision {revision or 'main'}) could not be loaded offline.\n"
        f"  searched: the local path {model_id!r} (not a folder) and the Hugging Face cache {hf_cache_dir()}\n"
        f"  pre-fetch on a machine with internet: {prefetch}\n"
        f"  then copy the cache (HF_HOME / HF_HUB_CACHE) to this machine, or set model.path to a local folder.\n"
        f"  cause: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    )


def resolve_model_path(model_cfg: dict[str, Any]) -> Path:
    """A local folder for the model: the configured path, a built tiny model, or the HF cache snapshot."""
    path = str(model_cfg["path"])
    builder = model_cfg.get("build")
    if builder and not Path(path, "model_index.json").is_file():
        import_object(builder)(path)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(path, revision=model_cfg.get("revision"),
                                  local_files_only=bool(model_cfg.get("local_files_only", True)),
                                  allow_patterns=model_cfg.get("allow_patterns"))
    except Exception as err:  # huggingface_hub raises several types for "not cached"/"offline"
        raise _missing_weights(path, model_cfg.get("revision"), model_cfg.get("prefetch", "bench weights fetch"),
                               err) from err
    return Path(local)


def load_pipeline(model_cfg: dict[str, Any], scheduler_cfg: dict[str, Any], device: str = "cpu",
                  dtype: str = "float32") -> EditPipeline:
    """Load an SD-style pipeline with ``from_pretrained`` and attach an explicit DDIM scheduler."""
    from diffusers import StableDiffusionPipeline

    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    local = resolve_model_path(model_cfg)
    try:
        sd = StableDiffusionPipeline.from_pretrained(
            str(local), dtype=torch_dtype, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, local_files_only=True, use_safetensors=True,
        )
    except (OSError, ValueError) as err:
        raise _missing_weights(str(model_cfg["path"]), model_cfg.get("revision"),
                               model_cfg.get("prefetch", "bench weights fetch"), err) from err
    for module in (sd.unet, sd.vae, sd.text_encoder):
        module.to(torch_device).eval().requires_grad_(False)

    image_encoder_loader = None
    encoder_cfg = model_cfg.get("image_encoder")
    if encoder_cfg:
        def image_encoder_loader():
            from transformers import CLIPVisionModel

            enc_path = str(encoder_cfg.get("path") or local)
            try:
                encoder = CLIPVisionModel.from_pretrained(enc_path, subfolder=encoder_cfg.get("subfolder") or "",
                                                          local_files_only=True)
            except OSError as err:
                raise _missing_weights(enc_path, None, model_cfg.get("prefetch", "bench weights fetch"), err) from err
            return encoder.to(torch_device).eval().requires_grad_(False)

    return EditPipeline(
        unet=sd.unet, vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
        scheduler=build_scheduler(dict(scheduler_cfg)), device=torch_device, dtype=torch_dtype,
        model_id=str(model_cfg.get("name") or model_cfg["path"]), weights_fingerprint=fingerprint_dir(local),
        image_encoder_loader=image_encoder_loader, reference_precision=dtype == REFERENCE_DTYPE,
    )
