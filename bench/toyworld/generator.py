"""The procedural shapes world: scenes, captions, ground-truth edits.

A scene is one shape (circle, square, triangle, star, heart) in one of 8 shape colours, at a random
position / size / rotation, on one of 8 background colours with a soft gradient and texture. Every
scene is a row of plain numbers (``Scenes``), rendered by vectorised numpy at 64×64.

Shape colours and background colours use disjoint word lists, so a caption such as
"a red circle on a navy background" names each attribute with its own word, and an edit swaps
exactly one word (the blend words of prompt-to-prompt).

An edit replaces one attribute (``colour``, ``shape`` or ``background``) and keeps everything else,
including the exact geometry and the background texture, so ``render`` of the edited scene is the
pixel-exact ground-truth target. Masks are the shape's anti-aliased coverage (alpha).

Randomness: every draw goes through ``numpy.random.Generator`` built from an explicit seed (an int
or a tuple of ints for ``SeedSequence``), so the same seed gives the same pixels on any machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = {  # shape colours: saturated
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40), "green": (40, 170, 60),
    "cyan": (40, 215, 225), "blue": (40, 80, 225), "purple": (140, 50, 200), "pink": (245, 120, 190),
}
BACKGROUNDS = {  # background colours: muted, dark or light, distinct from the shape colours
    "black": (20, 20, 24), "white": (236, 236, 232), "gray": (128, 128, 128), "brown": (110, 70, 40),
    "navy": (22, 30, 90), "olive": (110, 115, 40), "beige": (215, 195, 150), "teal": (20, 105, 105),
}
COLOUR_NAMES = tuple(COLOURS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)
ATTRIBUTES = ("colour", "shape", "background")
ATTRIBUTE_VALUES = {"colour": COLOUR_NAMES, "shape": SHAPES, "background": BACKGROUND_NAMES}
SUPERSAMPLE = 3  # sub-pixel samples per axis for anti-aliased coverage


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def all_captions() -> list[str]:
    """Every caption of the world (8 × 5 × 8 = 320), in (colour, shape, background) index order."""
    return [caption(c, s, b) for c in COLOUR_NAMES for s in SHAPES for b in BACKGROUND_NAMES]


def caption_index(colour: int, shape: int, background: int) -> int:
    """Index into ``all_captions()`` of an attribute-index triple (works on numpy arrays too)."""
    return (colour * len(SHAPES) + shape) * len(BACKGROUND_NAMES) + background


def caption_attributes(index):
    """Inverse of ``caption_index``: (colour, shape, background) indices."""
    background = index % len(BACKGROUND_NAMES)
    shape = (index // len(BACKGROUND_NAMES)) % len(SHAPES)
    colour = index // (len(BACKGROUND_NAMES) * len(SHAPES))
    return colour, shape, background


def rng_from(seed) -> np.random.Generator:
    """A numpy Generator from an int or a tuple of non-negative ints (SeedSequence entropy)."""
    entropy = list(seed) if isinstance(seed, (tuple, list)) else [int(seed)]
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


@dataclass(frozen=True)
class Scenes:
    """N scenes as parallel arrays (attribute indices + geometry + appearance jitter)."""

    colour: np.ndarray  # (N,) index into COLOUR_NAMES
    shape: np.ndarray  # (N,) index into SHAPES
    background: np.ndarray  # (N,) index into BACKGROUND_NAMES
    center: np.ndarray  # (N, 2) x, y in pixels
    radius: np.ndarray  # (N,) half-extent of the shape in pixels
    angle: np.ndarray  # (N,) rotation in radians
    colour_jitter: np.ndarray  # (N, 3) added to the shape colour (0-255 units)
    background_jitter: np.ndarray  # (N, 3) added to the background colour
    gradient: np.ndarray  # (N, 3): direction angle, strength (0-255 units), texture strength
    texture_phase: np.ndarray  # (N, 4, 3): per texture wave: frequency x, frequency y, phase

    def __len__(self) -> int:
        return int(self.colour.shape[0])

    def __getitem__(self, index) -> "Scenes":
        index = np.atleast_1d(np.asarray(index)) if not isinstance(index, slice) else index
        return Scenes(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def captions(self) -> list[str]:
        return [caption(COLOUR_NAMES[c], SHAPES[s], BACKGROUND_NAMES[b])
                for c, s, b in zip(self.colour, self.shape, self.background)]

    def caption_indices(self) -> np.ndarray:
        return caption_index(self.colour, self.shape, self.background)

    def attribute(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def replace(self, **changes) -> "Scenes":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def concat(parts: Sequence["Scenes"]) -> "Scenes":
        return Scenes(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                         for f in dataclasses.fields(Scenes)})


def sample_scenes(seed, n: int) -> Scenes:
    """N random scenes, a pure function of (seed, n)."""
    rng = rng_from(seed)
    radius = rng.uniform(13.0, 21.0, n)
    margin = radius + 2.0
    center = np.stack([rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin)], axis=1)
    shape = rng.integers(0, len(SHAPES), n)
    # hearts stay roughly upright (a heart upside down reads as something else); others rotate freely
    angle = np.where(shape == SHAPES.index("heart"), rng.uniform(-0.5, 0.5, n), rng.uniform(-np.pi, np.pi, n))
    texture = np.stack([rng.uniform(0.05, 0.35, (n, 4)), rng.uniform(0.05, 0.35, (n, 4)),
                        rng.uniform(0, 2 * np.pi, (n, 4))], axis=2)
    return Scenes(
        colour=rng.integers(0, len(COLOUR_NAMES), n), shape=shape,
        background=rng.integers(0, len(BACKGROUND_NAMES), n), center=center, radius=radius, angle=angle,
        colour_jitter=rng.uniform(-12, 12, (n, 3)), background_jitter=rng.uniform(-10, 10, (n, 3)),
        gradient=np.stack([rng.uniform(-np.pi, np.pi, n), rng.uniform(10, 35, n), rng.uniform(3, 9, n)], axis=1),
        texture_phase=texture,
    )


# ----------------------------------------------------------------------------------------------
# shape coverage


def _polygon(kind: str) -> np.ndarray:
    """Unit polygon vertices (K, 2) for the polygonal shapes, centred at the origin, y down."""
    if kind == "square":
        s = 0.8
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    if kind == "triangle":
        t = np.deg2rad(-90 + np.arange(3) * 120)  # one vertex pointing up
        return np.stack([np.cos(t), np.sin(t) + 0.2], axis=1)
    if kind == "star":
        t = np.deg2rad(-90 + np.arange(10) * 36)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t) + 0.05], axis=1)
    raise ValueError(kind)


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd crossing test, vectorised over points (any shape of x, y)."""
    inside = np.zeros(x.shape, dtype=bool)
    for k in range(len(poly)):
        (x0, y0), (x1, y1) = poly[k], poly[(k + 1) % len(poly)]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


def _inside(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test in the shape's unit frame (shape spans about [-1, 1]², y pointing down)."""
    if kind == "circle":
        return x * x + y * y <= 0.9 ** 2
    if kind == "heart":
        # the classic implicit heart (x² + y² − 1)³ − x² y³ ≤ 0, y up; scaled to span about [-1, 1]
        hx, hy = x * 1.2, -(y * 1.2) + 0.15
        return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy ** 3 <= 0
    return _inside_polygon(x, y, _polygon(kind))


def shape_alpha(scenes: Scenes, shape: np.ndarray | None = None) -> np.ndarray:
    """Anti-aliased coverage (N, 64, 64) in [0, 1] of each scene's shape (or of ``shape`` instead)."""
    shape = scenes.shape if shape is None else np.asarray(shape)
    n = len(scenes)
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    grid = (np.arange(SIZE)[:, None] + offsets[None, :]).reshape(-1)  # (64·S,) sub-pixel coordinates
    gx, gy = np.meshgrid(grid, grid)  # (64S, 64S) pixel coordinates (x right, y down)
    alpha = np.zeros((n, SIZE, SIZE), dtype=np.float32)
    for kind_index, kind in enumerate(SHAPES):
        rows = np.nonzero(shape == kind_index)[0]
        if rows.size == 0:
            continue
        cos, sin = np.cos(scenes.angle[rows]), np.sin(scenes.angle[rows])
        dx = gx[None] - scenes.center[rows, 0, None, None]
        dy = gy[None] - scenes.center[rows, 1, None, None]
        r = scenes.radius[rows, None, None]
        # rotate the sample points into the shape's frame (inverse rotation), scale to unit size
        ux = (cos[:, None, None] * dx + sin[:, None, None] * dy) / r
        uy = (-sin[:, None, None] * dx + cos[:, None, None] * dy) / r
        cover = _inside(kind, ux, uy).astype(np.float32)
        cover = cover.reshape(rows.size, SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(2, 4))
        alpha[rows] = cover
    return alpha


# ----------------------------------------------------------------------------------------------
# rendering


def background_layer(scenes: Scenes, background: np.ndarray | None = None) -> np.ndarray:
    """(N, 64, 64, 3) float background: base colour + jitter + linear gradient + soft texture."""
    background = scenes.background if background is None else np.asarray(background)
    base = np.array([BACKGROUNDS[name] for name in BACKGROUND_NAMES], dtype=np.float64)[background]
    base = base + scenes.background_jitter
    coords = (np.arange(SIZE) + 0.5 - SIZE / 2) / SIZE  # [-0.5, 0.5)
    xx, yy = np.meshgrid(coords, coords)
    direction = scenes.gradient[:, 0]
    ramp = np.cos(direction)[:, None, None] * xx + np.sin(direction)[:, None, None] * yy  # (N, 64, 64)
    px = np.arange(SIZE, dtype=np.float64)
    fx, fy, phase = (scenes.texture_phase[..., k][:, :, None, None] for k in range(3))
    waves = np.sin(fx * px[None, None, None, :] + fy * px[None, None, :, None] + phase).mean(axis=1)
    shade = scenes.gradient[:, 1, None, None] * ramp + scenes.gradient[:, 2, None, None] * waves
    return base[:, None, None, :] + shade[..., None]


def render(scenes: Scenes, *, return_alpha: bool = False):
    """uint8 images (N, 64, 64, 3); with ``return_alpha`` also the (N, 64, 64) coverage."""
    alpha = shape_alpha(scenes)
    fg = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float64)[scenes.colour] + scenes.colour_jitter
    # a faint top-left light on the shape so it is not perfectly flat
    coords = (np.arange(SIZE) + 0.5 - SIZE / 2) / SIZE
    xx, yy = np.meshgrid(coords, coords)
    light = 1.0 - 0.12 * (xx + yy)[None]
    shape_rgb = fg[:, None, None, :] * light[..., None]
    image = background_layer(scenes) * (1 - alpha[..., None]) + shape_rgb * alpha[..., None]
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return (image, alpha) if return_alpha else image


# ----------------------------------------------------------------------------------------------
# edits


@dataclass(frozen=True)
class Edit:
    """One rendered edit: source and true target images, masks, prompts, blend words."""

    source: np.ndarray  # (64, 64, 3) uint8
    target: np.ndarray  # (64, 64, 3) uint8
    source_alpha: np.ndarray  # (64, 64) float32 coverage of the source shape
    target_alpha: np.ndarray  # (64, 64) coverage of the target shape
    union_alpha: np.ndarray  # max(source, target) coverage
    edit_mask: np.ndarray  # (64, 64) in [0, 1]: the region the edit changes (see ``edit_region``)
    attribute: str
    source_value: str
    target_value: str
    source_prompt: str
    target_prompt: str


def edit_scenes(scenes: Scenes, attribute: str, new_values: np.ndarray) -> Scenes:
    """The scenes with one attribute replaced (geometry, jitter and texture kept)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute={attribute!r}; expected one of {ATTRIBUTES}")
    new_values = np.asarray(new_values)
    if np.any(new_values == scenes.attribute(attribute)):
        raise ValueError(f"an edit must change the {attribute}; got the same value for some scenes")
    return scenes.replace(**{attribute: new_values})


def edit_region(attribute: str, source_alpha: np.ndarray, target_alpha: np.ndarray) -> np.ndarray:
    """Where the edit changes pixels: the shape (colour), the union of both shapes (shape), or
    everything outside the shape (background)."""
    union = np.maximum(source_alpha, target_alpha)
    if attribute == "background":
        return 1.0 - source_alpha
    return union


def render_edit(scenes: Scenes, attribute: str, new_value: int) -> Edit:
    """Render a single scene (``len(scenes) == 1``) and its edit with ``attribute := new_value``."""
    if len(scenes) != 1:
        raise ValueError(f"render_edit takes one scene, got {len(scenes)}")
    target_scenes = edit_scenes(scenes, attribute, np.array([new_value]))
    source, source_alpha = render(scenes, return_alpha=True)
    target, target_alpha = render(target_scenes, return_alpha=True)
    values = ATTRIBUTE_VALUES[attribute]
    return Edit(
        source=source[0], target=target[0], source_alpha=source_alpha[0], target_alpha=target_alpha[0],
        union_alpha=np.maximum(source_alpha[0], target_alpha[0]),
        edit_mask=edit_region(attribute, source_alpha[0], target_alpha[0]).astype(np.float32),
        attribute=attribute, source_value=values[int(scenes.attribute(attribute)[0])],
        target_value=values[int(new_value)],
        source_prompt=scenes.captions()[0], target_prompt=target_scenes.captions()[0],
    )


def random_edit_value(rng: np.random.Generator, attribute: str, current: int) -> int:
    """A value of ``attribute`` different from ``current``, uniformly."""
    choices = [k for k in range(len(ATTRIBUTE_VALUES[attribute])) if k != int(current)]
    return int(rng.choice(choices))
