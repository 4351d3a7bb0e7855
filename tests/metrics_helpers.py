"""Tiny random-weight evaluator backbones for the metric tests, written to local files so the metrics load
them through the same paths as real weights (no network, no cache)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_NAME = "tiny-clip-metrics-test"
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=0)


def save_features_state(path: Path, arch: str, seed: int = 0) -> Path:
    """A torchvision classifier's ``features.*`` weights (random; the classifier head is left out to keep
    the file small — the LPIPS loaders ignore it anyway)."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("features.")}
    save_file(state, str(path))
    return path


def write_tiny_open_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(model config JSON, safetensors checkpoint) of a tiny open_clip CLIP."""
    import open_clip
    from safetensors.torch import save_file

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    config_path = folder / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    ckpt = folder / f"{TINY_CLIP_NAME}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return config_path, ckpt


def write_tiny_vit(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(timm kwargs JSON, safetensors checkpoint) of a tiny timm ViT."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch8_224", pretrained=False, **TINY_VIT)
    kwargs_path = folder / "tiny-vit.json"
    kwargs_path.write_text(json.dumps(TINY_VIT))
    ckpt = folder / "tiny-vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return kwargs_path, ckpt


def write_tiny_hf_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers CLIPModel + CLIPProcessor (real CLIP BPE vocabulary) saved in HF format."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from bench.tiny_random import write_clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = write_clip_tokenizer(folder / "_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=49408, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    out = folder / "clip"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
