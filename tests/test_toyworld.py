"""Toy world: generator determinism and ground truth, the toy_shapes suite, the tiny tokenizer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bench.toyworld import generator as g


def test_scenes_and_renders_are_deterministic_from_the_seed():
    a, b, c = g.sample_scenes(5, 16), g.sample_scenes(5, 16), g.sample_scenes(6, 16)
    assert np.array_equal(g.render(a), g.render(b))
    assert not np.array_equal(g.render(a), g.render(c))
    assert g.render(a).shape == (16, 64, 64, 3) and g.render(a).dtype == np.uint8
    # tuple seeds (namespaces) are distinct from each other and from plain ints
    assert not np.array_equal(g.sample_scenes((5, 1), 4).center, g.sample_scenes((5, 2), 4).center)


def test_captions_cover_the_world_and_index_roundtrip():
    captions = g.all_captions()
    assert len(captions) == len(set(captions)) == 8 * 5 * 8
    scenes = g.sample_scenes(1, 32)
    for text, index in zip(scenes.captions(), scenes.caption_indices()):
        assert captions[index] == text
        c, s, b = g.caption_attributes(index)
        assert text == g.caption(g.COLOUR_NAMES[c], g.SHAPES[s], g.BACKGROUND_NAMES[b])
    assert not set(g.COLOUR_NAMES) & set(g.BACKGROUND_NAMES)  # each word names one attribute


def test_shape_masks_have_the_expected_area_and_stay_inside():
    scenes = g.sample_scenes(2, 64)
    circles = scenes.replace(shape=np.zeros(64, dtype=int))
    alpha = g.shape_alpha(circles)
    expected = np.pi * (0.9 * circles.radius) ** 2
    assert np.allclose(alpha.sum(axis=(1, 2)), expected, rtol=0.03)
    squares = scenes.replace(shape=np.ones(64, dtype=int))
    assert np.allclose(g.shape_alpha(squares).sum(axis=(1, 2)), (1.6 * squares.radius) ** 2, rtol=0.03)
    # shapes are placed radius + 2 px from the border; only square corners may graze it
    assert (scenes.center >= scenes.radius[:, None] + 2).all() and (scenes.center <= 64 - scenes.radius[:, None] - 2).all()
    for kind in range(len(g.SHAPES)):
        a = g.shape_alpha(scenes.replace(shape=np.full(64, kind)))
        border = a[:, 0, :].sum(1) + a[:, -1, :].sum(1) + a[:, 1:-1, 0].sum(1) + a[:, 1:-1, -1].sum(1)
        assert (border <= 0.02 * a.sum(axis=(1, 2))).all()
        assert (a.sum(axis=(1, 2)) > 50).all()


@pytest.mark.parametrize("attribute", g.ATTRIBUTES)
def test_edits_change_exactly_the_attribute_inside_the_mask(attribute):
    rng = g.rng_from(7)
    scenes = g.sample_scenes(3, 12)
    for k in range(len(scenes)):
        scene = scenes[k]
        new = g.random_edit_value(rng, attribute, int(scene.attribute(attribute)[0]))
        edit = g.render_edit(scene, attribute, new)
        src, tgt = edit.source.astype(int), edit.target.astype(int)
        changed = np.abs(src - tgt).max(axis=2) > 0
        outside = edit.edit_mask == 0
        assert not changed[outside].any(), "pixels outside the edit mask must be identical"
        if attribute == "colour":
            assert np.array_equal(edit.source_alpha, edit.target_alpha)
            assert np.array_equal(edit.edit_mask, edit.source_alpha)
            inside = edit.source_alpha == 1
            assert changed[inside].mean() > 0.99
            # the fully covered pixels now carry the new colour (± jitter and shading)
            want = np.array(g.COLOURS[g.COLOUR_NAMES[new]])
            assert np.abs(np.median(tgt[inside], axis=0) - want).max() < 40
        elif attribute == "background":
            assert np.array_equal(edit.edit_mask, 1 - edit.source_alpha)
            assert changed[edit.source_alpha == 0].mean() > 0.99
            assert not changed[edit.source_alpha == 1].any()
        else:
            assert np.array_equal(edit.union_alpha, np.maximum(edit.source_alpha, edit.target_alpha))
            assert np.array_equal(edit.edit_mask, edit.union_alpha)
            only_one = (edit.source_alpha == 1) != (edit.target_alpha == 1)
            assert changed[only_one].mean() > 0.99  # shape and background swap there
            both = (edit.source_alpha == 1) & (edit.target_alpha == 1)
            assert not changed[both].any()  # same colour, same light where both shapes cover
        # the prompts differ in exactly the edited word
        diff = [(a, b) for a, b in zip(edit.source_prompt.split(), edit.target_prompt.split()) if a != b]
        assert diff == [(edit.source_value, edit.target_value)]


def test_edit_must_change_the_value():
    scene = g.sample_scenes(0, 1)
    with pytest.raises(ValueError, match="must change"):
        g.render_edit(scene, "shape", int(scene.shape[0]))
    with pytest.raises(ValueError, match="attribute"):
        g.edit_scenes(scene, "size", np.array([1]))


def test_tiny_tokenizer_makes_each_caption_word_one_token(tmp_path):
    from transformers import CLIPTokenizer

    from bench.toyworld.tokenizer import caption_words, write_toy_tokenizer

    tok = CLIPTokenizer.from_pretrained(write_toy_tokenizer(tmp_path), local_files_only=True)
    for word in caption_words():
        assert len(tok(word).input_ids) == 3, word  # start, word, end
    ids = tok("a red circle on a navy background", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[8:] == [tok.eos_token_id] * 69
    assert len(tok("a zebra").input_ids) > 3  # unknown words fall back to byte pieces
    assert len(tok.get_vocab()) < 700


# ----------------------------------------------------------------------------------------------
# the toy_shapes suite


def _digest(paths):
    return hashlib.sha256(b"".join(Path(p).read_bytes() for p in paths)).hexdigest()


def test_toy_shapes_suite_has_48_items_with_files_and_is_byte_stable(tmp_path):
    from PIL import Image

    from bench.data.toy_shapes import ToyShapes

    items = ToyShapes(str(tmp_path / "a")).items()
    assert len(items) == 48
    assert sorted({i.edit_category for i in items}) == ["background", "colour", "shape"]
    assert all(sum(i.edit_category == c for i in items) == 16 for c in g.ATTRIBUTES)
    assert len({i.image_id for i in items}) == 48
    for item in items:
        item.validate()
        for path in (item.image_path, item.target_image_path, item.mask_path, item.extra["union_mask_path"]):
            assert Path(path).is_file()
        src_word, tgt_word = item.blend_words
        assert src_word in item.source_prompt.split() and tgt_word in item.target_prompt.split()
        assert item.extra["target_attributes"][item.edit_category] == tgt_word
        src = np.asarray(Image.open(item.image_path)).astype(int)
        tgt = np.asarray(Image.open(item.target_image_path)).astype(int)
        mask = np.asarray(Image.open(item.mask_path))
        assert src.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert not (np.abs(src - tgt).max(axis=2) > 0)[mask == 0].any()
    files = [p for i in items for p in (i.image_path, i.target_image_path, i.mask_path)]
    again = ToyShapes(str(tmp_path / "b")).items()
    assert _digest(files) == _digest([p for i in again for p in (i.image_path, i.target_image_path, i.mask_path)])
    # a second load reuses the files (no rewrite: same mtimes)
    mtimes = [Path(p).stat().st_mtime_ns for p in files]
    ToyShapes(str(tmp_path / "a")).items()
    assert mtimes == [Path(p).stat().st_mtime_ns for p in files]


def test_toy_shapes_suite_is_disjoint_from_training_pools():
    from bench.data.toy_shapes import SUITE_NAMESPACE
    from bench.toyworld.train import common as train

    assert SUITE_NAMESPACE not in {train.POOL_GENERATOR, train.POOL_EVALUATOR, train.HELDOUT}
    suite = g.sample_scenes((0, SUITE_NAMESPACE), 48)
    pool = g.sample_scenes((0, train.POOL_GENERATOR, 0), 1024)
    assert not np.isin(suite.center[:, 0], pool.center[:, 0]).any()
