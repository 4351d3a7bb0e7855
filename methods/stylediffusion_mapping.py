"""StyleDiffusion's image features E(x) and per-step mapping networks M_i (methods/stylediffusion_p2plus.py
has the algorithm; docs/methods.md#null-text-inversion-and-stylediffusion)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Inversion
from methods.p2p import MAX_TOKENS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------
# image features


def clip_image_tokens(encoder, image: torch.Tensor) -> torch.Tensor:
    """E(x) = post_layernorm(all tokens of the CLIP vision tower), (B, L, D) in fp32.

    image (B,3,H,W) in [-1,1] → [0,1] → resize (short side → image_size, bicubic, no antialias: the
    reference applies torchvision's Resize to a tensor, whose default then was no antialias) → centre
    crop → CLIP mean/std.
    """
    size = int(encoder.config.image_size)
    x = (image.float() + 1) / 2
    height, width = x.shape[-2:]
    short = min(height, width)
    resized = (size * height // short, size * width // short)
    x = F.interpolate(x, size=resized, mode="bicubic", align_corners=False, antialias=False)
    top, left = round((resized[0] - size) / 2), round((resized[1] - size) / 2)
    x = x[..., top:top + size, left:left + size]
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    pixels = ((x - mean) / std).to(device=encoder.device, dtype=encoder.dtype)
    hidden = encoder(pixel_values=pixels).last_hidden_state
    return encoder.post_layernorm(hidden).float()


# ----------------------------------------------------------------------------------------------
# the mapping network


class MappingNetwork(nn.Module):
    """M_i: image tokens (B, L, D_img) → (scale s, shift b), each (B, 77, D_txt). One block (BLOCK_NUM = 1).

    SD v1 + CLIP ViT-B/16 have D_img = D_txt = 768 and the network is the reference one. An encoder of
    another width (the toy world's: 96 vs 128) gets a ``feature_adapter`` Linear(D_img → D_txt) on the
    tokens first — an addition of this harness, absent when the widths agree.
    """

    def __init__(self, num_tokens: int, feature_width: int, context_width: int,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        width = 2 * MAX_TOKENS  # 154 = scale rows + shift rows

        def make(cls, *args, **kwargs):  # no init here (no draw from the global RNG): see ``initialise``
            return torch.nn.utils.skip_init(cls, *args, device=device, **kwargs)

        self.feature_adapter = make(nn.Linear, feature_width, context_width) if feature_width != context_width else None
        self.conv_start = make(nn.Conv1d, num_tokens, width, kernel_size=1)
        self.conv_block = nn.Sequential(
            make(nn.Conv1d, width, width, kernel_size=1),
            make(nn.BatchNorm1d, width, affine=True, track_running_stats=False),  # batch statistics: stylediffusion_p2plus module doc
            nn.LeakyReLU(),
        )
        self.conv_end = make(nn.Conv1d, width, width, kernel_size=1)

    def initialise(self, generator: torch.Generator) -> "MappingNetwork":
        """PyTorch's default init drawn from ``generator``: Conv1d/Linear weight and bias ~ U(±1/√fan_in)
        (= kaiming_uniform(a=√5)); BatchNorm weight 1, bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                bound = 1 / math.sqrt(module.weight[0].numel())  # fan_in
                for param in (module.weight, module.bias):
                    values = torch.empty(param.shape).uniform_(-bound, bound, generator=generator)
                    param.data.copy_(values)
            elif isinstance(module, nn.BatchNorm1d):
                module.reset_parameters()
        return self

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.feature_adapter is not None:
            features = self.feature_adapter(features)
        out = self.conv_end(self.conv_block(self.conv_start(features)))
        return out[:, :MAX_TOKENS], out[:, MAX_TOKENS:]


def styled_value(context: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """ṽ = c ⊙ s + b (computed in fp32, returned in the context's dtype)."""
    return (context.float() * scale + shift).to(context.dtype)


def item_scale_shift(networks: list[MappingNetwork], features: torch.Tensor,
                     items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, b) of ``items``, each (len(items), 77, D): M^b(E(x_b)) item by item, so that each network's BatchNorm
    sees one item's features, as at B = 1 (stylediffusion_p2plus module doc, item batching)."""
    scales, shifts = zip(*(networks[b](features[b:b + 1]) for b in items))
    return torch.cat(scales), torch.cat(shifts)


def mapping_tensors(networks: list[MappingNetwork]) -> dict[str, torch.Tensor]:
    """Flat named tensors ``mapping.<i>.<name>`` of every step's network."""
    return {f"mapping.{i}.{name}": value.detach() for i, net in enumerate(networks)
            for name, value in net.state_dict().items()}


def load_mapping_networks(inversion: Inversion, num_steps: int, context_width: int) -> list[MappingNetwork]:
    """The networks stored by ``mapping_tensors`` (fp32, eval mode, no grad)."""
    features = inversion.tensors["image_features"]
    networks = []
    for i in range(num_steps):
        prefix = f"mapping.{i}."
        state = {k[len(prefix):]: v.float() for k, v in inversion.tensors.items() if k.startswith(prefix)}
        net = MappingNetwork(features.shape[1], features.shape[2], context_width, device=features.device)
        net.load_state_dict(state)
        networks.append(net.eval().requires_grad_(False))
    return networks
