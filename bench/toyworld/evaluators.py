"""The toy evaluator backbones: architectures, file formats, loaders, attribute classifiers.

Files in ``bench/toyworld/weights/evaluators/`` (trained by ``bench toy train --stage evaluators``):

- ``toy-clip.json`` + ``toy-clip.safetensors``: an open_clip CLIP (ModifiedResNet image tower). Load with
  ``open_clip.add_model_config(json)`` then ``open_clip.create_model_and_transforms('toy-clip',
  pretrained=safetensors)``; tokenize with ``open_clip.get_tokenizer('toy-clip')`` (the standard CLIP
  BPE, context length 16). Images: 64×64 RGB in [0, 1], normalised with OpenAI CLIP mean/std (the
  transforms open_clip returns do exactly that).
- ``toy-vit.json`` + ``toy-vit.safetensors``: a timm ViT, ``timm.create_model("vit_base_patch8_224",
  **json)`` (the json holds only the create_model kwargs: img_size 64, patch 8, width 96, depth 4,
  4 heads, 21 classes), trained as a supervised classifier of the three attributes (21 logits: 8
  colours, 5 shapes, 8 backgrounds). Inputs: [0, 1] RGB normalised with ImageNet mean/std.
- ``toy-alexnet.safetensors``: the ``features.*`` part of a torchvision ``alexnet()`` state dict (the
  part LPIPS uses; torchvision's 58 M-parameter classifier head is not stored), trained with a small
  linear head as an attribute classifier on LPIPS-scaled inputs ([-1, 1] → LPIPS' ScalingLayer).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.toyworld.generator import BACKGROUND_NAMES, COLOUR_NAMES, SHAPES, all_captions, caption_attributes

WEIGHTS_DIR = Path(__file__).parent / "weights"  # the committed toy-world weights
EVALUATORS_DIR = WEIGHTS_DIR / "evaluators"
CLIP_NAME = "toy-clip"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# LPIPS' ScalingLayer constants (inputs in [-1, 1] are shifted and scaled by these)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NUM_CLASSES = len(COLOUR_NAMES) + len(SHAPES) + len(BACKGROUND_NAMES)  # 21 attribute logits
ATTRIBUTE_SLICES = {"colour": slice(0, 8), "shape": slice(8, 13), "background": slice(13, 21)}

CLIP_CONFIG = {
    "embed_dim": 128,
    # a small CLIP ModifiedResNet (conv stem, 4 bottleneck stages, attention pooling): on CPU it learns
    # shapes ~2× cheaper per step than a ViT of similar size
    "vision_cfg": {"image_size": 64, "layers": [1, 2, 2, 1], "width": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
# toy-vit.json holds exactly the timm.create_model kwargs (what the Structure-dist loader passes on);
# the architecture name is VIT_MODEL_NAME; inputs are [0, 1] RGB normalised with ImageNet mean/std
VIT_MODEL_NAME = "vit_base_patch8_224"
VIT_KWARGS = {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 4, "mlp_ratio": 4.0,
              "num_classes": NUM_CLASSES}


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """[-1, 1] images → [0, 1] → (x - mean) / std."""
    x = (images.float() + 1) / 2
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    return _normalise(images, OPENAI_MEAN, OPENAI_STD)


def vit_pixels(images: torch.Tensor) -> torch.Tensor:
    return _normalise(images, IMAGENET_MEAN, IMAGENET_STD)


def lpips_pixels(images: torch.Tensor) -> torch.Tensor:
    shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
    return (images.float() - shift) / scale


# ----------------------------------------------------------------------------------------------
# builders (random init; training fills them) and loaders (committed files)


def build_clip():
    import open_clip

    return open_clip.model.CLIP(**CLIP_CONFIG)


def clip_tokenizer():
    """The standard CLIP BPE tokenizer at the toy context length (what get_tokenizer('toy-clip') gives)."""
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer(context_length=CLIP_CONFIG["text_cfg"]["context_length"])


def build_vit():
    import timm

    return timm.create_model(VIT_MODEL_NAME, pretrained=False, **VIT_KWARGS)


class AlexAttributeNet(torch.nn.Module):
    """torchvision ``alexnet().features`` + a linear attribute head (256 → 21) for 64² inputs."""

    def __init__(self):
        super().__init__()
        from torchvision.models import alexnet

        self.features = alexnet().features
        self.head = torch.nn.Linear(256, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))

    def features_state_dict(self) -> dict[str, torch.Tensor]:
        """Keys exactly as in torchvision ``alexnet().state_dict()`` (``features.0.weight`` ...)."""
        return {f"features.{k}": v for k, v in self.features.state_dict().items()}


def load_clip(directory: str | Path = EVALUATORS_DIR, device: str = "cpu"):
    """(model, preprocess, tokenizer) of the committed toy CLIP, through open_clip's own loaders."""
    import open_clip

    directory = Path(directory)
    json_path, weights = directory / f"{CLIP_NAME}.json", directory / f"{CLIP_NAME}.safetensors"
    for path in (json_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"toy evaluator file missing: {path} (train with `bench toy train --stage evaluators`)")
    open_clip.add_model_config(str(json_path))
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_NAME, pretrained=str(weights), device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(CLIP_NAME)


def load_vit(directory: str | Path = EVALUATORS_DIR):
    import timm
    from safetensors.torch import load_file

    directory = Path(directory)
    kwargs = json.loads((directory / "toy-vit.json").read_text())
    model = timm.create_model(VIT_MODEL_NAME, pretrained=False, **kwargs)
    model.load_state_dict({k: v.float() for k, v in load_file(directory / "toy-vit.safetensors").items()})
    return model.eval()


def load_alexnet(directory: str | Path = EVALUATORS_DIR):
    """torchvision ``alexnet()`` with the toy ``features`` weights (classifier left at random init)."""
    from safetensors.torch import load_file
    from torchvision.models import alexnet

    model = alexnet()
    state = {k: v.float() for k, v in load_file(Path(directory) / "toy-alexnet.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith("features.") for k in missing):
        raise RuntimeError(f"toy-alexnet.safetensors does not match torchvision alexnet(): missing={missing} "
                           f"unexpected={unexpected}")
    return model.eval()


# ----------------------------------------------------------------------------------------------
# zero-shot attribute classification


class ClipAttributeClassifier:
    """Zero-shot (colour, shape, background) by argmax over the 320 captions of the world.

    ``encode_image(pixels)`` / ``encode_text(list of captions)`` give (B, D) embeddings; works for the
    open_clip evaluator and for the generator's transformers CLIP alike.
    """

    def __init__(self, encode_image, encode_text, pixels=clip_pixels):
        self.encode_image = encode_image
        self.pixels = pixels
        with torch.no_grad():
            self.text = F.normalize(encode_text(all_captions()).float(), dim=-1)

    @torch.no_grad()
    def caption_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 320) cosine similarities for [-1, 1] images (B, 3, 64, 64)."""
        feats = F.normalize(self.encode_image(self.pixels(images)).float(), dim=-1)
        return feats @ self.text.T

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(B, 3) long: colour, shape, background indices."""
        best = torch.cat([self.caption_logits(images[i:i + batch_size]).argmax(dim=1)
                          for i in range(0, images.shape[0], batch_size)])
        return torch.stack(caption_attributes(best), dim=1)

    @classmethod
    def from_open_clip(cls, model, tokenizer):
        return cls(model.encode_image, lambda texts: model.encode_text(tokenizer(texts)))


def load_clip_classifier(directory: str | Path = EVALUATORS_DIR) -> ClipAttributeClassifier:
    model, _, tokenizer = load_clip(directory)
    return ClipAttributeClassifier.from_open_clip(model, tokenizer)


def attribute_accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Per-attribute and all-three accuracy of (N, 3) index predictions."""
    correct = predicted == truth
    out = {name: float(correct[:, k].float().mean()) for k, name in enumerate(("colour", "shape", "background"))}
    out["all"] = float(correct.all(dim=1).float().mean())
    return out
