"""UNet attention layers, their place (down/mid/up) and query resolution, and SD-equivalent sizes.

The references hard-code SD v1's geometry (64² latent; attention at 64/32/16 in down/up, 8 in mid):
stored maps ≤ 32² (``AttentionStore``), LocalBlend on the 16² cross maps of down and up
(``down_cross[2:4] + up_cross[:3]``), self-attention replacement for maps ≤ 16² query tokens (P2P)
or ≤ 32² (P2Plus). ``sd_equivalent_resolution(unet, r)`` maps such an r to this UNet: r·latent/64,
rounded *up* to the nearest resolution the UNet has attention at (the largest one if none is that
large). SD: identity. The tiny test UNet (latent 16², attention at 16 and 8): 16 → 4 → 8, 32 → 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

PLACES = ("down", "mid", "up")
SD_LATENT_SIZE = 64  # the latent size the references' hard-coded resolutions refer to


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module of the UNet: processor name, place (down/mid/up), self/cross, map size."""

    name: str
    place: str
    is_cross: bool
    resolution: int  # the query map is resolution × resolution

    @property
    def kind(self) -> str:
        return "cross" if self.is_cross else "self"


def attention_layers(unet) -> dict[str, AttentionLayer]:
    """Every attention processor of a UNet2DConditionModel, with its place and query resolution.

    down_blocks[i] runs at latent/2^i, the mid block at latent/2^(n−1), up_blocks[j] at
    latent/2^(n−1−j) (n = number of blocks); attn1 is self-attention, attn2 cross-attention.
    """
    latent = int(unet.config.sample_size)
    num_levels = len(unet.config.block_out_channels)
    layers = {}
    for name in unet.attn_processors:
        parts = name.split(".")
        if parts[0] == "down_blocks":
            place, level = "down", int(parts[1])
        elif parts[0] == "mid_block":
            place, level = "mid", num_levels - 1
        elif parts[0] == "up_blocks":
            place, level = "up", num_levels - 1 - int(parts[1])
        else:
            raise ValueError(f"attention layer {name!r} is not in down_blocks/mid_block/up_blocks")
        if not parts[-2].startswith("attn"):
            raise ValueError(f"attention layer {name!r}: expected '...attn1.processor' or '...attn2.processor'")
        layers[name] = AttentionLayer(name, place, parts[-2] == "attn2", latent // 2**level)
    return layers


def sd_equivalent_resolution(unet, sd_resolution: int, places: Sequence[str] = ("down", "up")) -> int:
    """This UNet's attention resolution standing for ``sd_resolution`` at SD's 64² latent (see module doc).

    Candidates are the resolutions of the layers in ``places``: the references' hard-coded sizes
    (16² LocalBlend / NS-LPIPS / StyleDiffusion-loss maps, 16²/32² self-replacement limits) name down/up
    maps, and a small UNet's mid block (4² in the toy model, below every down/up level) must not capture
    a size whose maps are read from down/up layers."""
    available = sorted({layer.resolution for layer in attention_layers(unet).values() if layer.place in places})
    target = sd_resolution * int(unet.config.sample_size) / SD_LATENT_SIZE
    return next((r for r in available if r >= target), available[-1])
