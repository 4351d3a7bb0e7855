"""P2P attention control on the tiny pipeline (latent 16², attention at 16² and 8²)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bench.data.item import EditItem
from methods.ddim_p2p import DDIMP2P
from methods.ef_ddpm_p2p import EFDDPMP2P
from methods.p2p import (
    AttentionController,
    AttentionRefine,
    AttentionStore,
    LocalBlend,
    align_tokens,
    attention_control,
    attention_layers,
    build_p2p_controller,
    cross_replace_schedule,
    replacement_mapper,
    sd_equivalent_resolution,
    step_window,
    word_token_indices,
)

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"


def unet_batch(pipe, prompts, seed=0):
    """A CFG batch [∅…, c…] for the prompts, one random latent per branch (as mid-trajectory P2P latents)."""
    x = torch.randn(len(prompts), 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    return torch.cat([x, x]), torch.cat([pipe.encode_prompts([""] * len(prompts)), pipe.encode_prompts(prompts)])


def test_sizes_follow_the_pipeline(tiny_pipe):
    assert sd_equivalent_resolution(tiny_pipe.unet, 16) == 8  # 16·16/64 = 4 → nearest available ≥ 4
    assert sd_equivalent_resolution(tiny_pipe.unet, 32) == 8
    assert sd_equivalent_resolution(tiny_pipe.unet, 64) == 16
    names = [f"down_blocks.{i}.attentions.{j}.transformer_blocks.0.attn{a}.processor"
             for i in range(3) for j in range(2) for a in (1, 2)]
    names += [f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn{a}.processor"
              for i in range(1, 4) for j in range(3) for a in (1, 2)]
    names += [f"mid_block.attentions.0.transformer_blocks.0.attn{a}.processor" for a in (1, 2)]
    sd_unet = SimpleNamespace(config=SimpleNamespace(sample_size=64, block_out_channels=(320, 640, 1280, 1280)),
                              attn_processors=dict.fromkeys(names))
    assert [sd_equivalent_resolution(sd_unet, r) for r in (16, 32, 64)] == [16, 32, 64]  # SD: identity
    assert sd_equivalent_resolution(sd_unet, 8, places=("down", "mid", "up")) == 8  # SD's mid block


@torch.no_grad()
def test_store_matches_fused_attention_and_records_averages(tiny_pipe):
    x, context = unet_batch(tiny_pipe, [SOURCE])
    reference = tiny_pipe.unet_eps(x, 500, context)
    store = AttentionStore()
    with attention_control(tiny_pipe, store):
        for _ in range(2):
            out = tiny_pipe.unet_eps(x, 500, context)
            store.step_callback(x)
    assert (out - reference).abs().max() <= 1e-5  # explicit softmax path = SDPA
    assert len(store.summed_maps) == 14 and store.cur_step == 2
    maps = store.aggregate_cross_attention(8, places=("up", "down"))
    assert maps.shape == (8, 8, 77)
    assert torch.allclose(maps.sum(-1), torch.ones(8, 8), atol=1e-5)  # each query's distribution over tokens
    # the average over two identical steps equals one step's maps
    name = store.recorded_layers("cross", ("down",), 8)[0].name
    assert torch.allclose(store.average(name), store.summed_maps[name] / 2)
    head = store.aggregate_cross_attention(16, places=("down",), heads=[1])
    assert head.shape == (16, 16, 77)


def test_processors_restored_after_an_exception(tiny_pipe):
    class Failing(AttentionStore):
        def process(self, probs, layer):
            if layer.place == "mid":
                raise RuntimeError("boom")
            return super().process(probs, layer)

    before = dict(tiny_pipe.unet.attn_processors)
    x, context = unet_batch(tiny_pipe, [SOURCE])
    with pytest.raises(RuntimeError, match="boom"):
        with attention_control(tiny_pipe, Failing()), torch.no_grad():
            tiny_pipe.unet_eps(x, 500, context)
    after = tiny_pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


@torch.no_grad()
def test_same_prompt_target_branch_equals_source(tiny_pipe, source_image):
    same = EditItem("i", "img", "unused.png", SOURCE, SOURCE)
    ddim = DDIMP2P(num_steps=4, cross_replace_steps=0.8, self_replace_steps=0.5, p2p_mode="replace")
    out = ddim.edit_latents(tiny_pipe, ddim.invert(tiny_pipe, source_image, SOURCE, torch.Generator()), same)
    assert (out[0] - out[1]).abs().max() <= 1e-6
    ef = EFDDPMP2P(num_steps=4, skip=1, guidance_scale=3.5, p2p_mode="refine")
    out = ef.edit_latents(tiny_pipe, ef.invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0)), same)
    assert (out[0] - out[1]).abs().max() <= 1e-6


@torch.no_grad()
def test_replace_keeps_target_self_attention_equal_to_source_in_replaced_steps(tiny_pipe):
    num_steps = 4  # self window [0, int(4·0.5)) = steps 0, 1; cross rows [0, int(0.5·5)) = 0, 1
    controller = build_p2p_controller(tiny_pipe, SOURCE, TARGET, num_steps, 0.5, 0.5, mode="replace",
                                      store_max_resolution=None, store_self=True)
    x, context = unet_batch(tiny_pipe, [SOURCE, TARGET])
    with attention_control(tiny_pipe, controller):
        for step in range(3):
            tiny_pipe.unet_eps(x, 700, context)
            for name, maps in controller.step_maps.items():  # (branches, heads, Q, K), conditional rows
                layer = controller.layers[name]
                equal = torch.equal(maps[0], maps[1])
                replaced = step < 2 and (layer.is_cross or layer.resolution <= 8)
                assert equal == replaced, (step, name)
            controller.step_callback(x)


def test_replace_needs_equal_word_counts_and_auto_falls_back_to_refine(tiny_pipe):
    with pytest.raises(ValueError, match="same number of words.*refine"):
        build_p2p_controller(tiny_pipe, SOURCE, "a photo of a fluffy dog", 10, 0.8, 0.4, mode="replace")
    auto = build_p2p_controller(tiny_pipe, SOURCE, "a photo of a fluffy dog", 10, 0.8, 0.4)
    assert isinstance(auto.mapping, AttentionRefine)


def test_replacement_mapper(tiny_pipe):
    tok = tiny_pipe.tokenizer
    assert torch.equal(replacement_mapper(tok, SOURCE, TARGET), torch.eye(77))  # one token each
    word = "hippopotamus"  # several BPE tokens
    n = len(word_token_indices(tok, f"a photo of a {word}", word))
    assert n > 1
    mapper = replacement_mapper(tok, SOURCE, f"a photo of a {word}")
    cat = word_token_indices(tok, SOURCE, "cat")[0]
    assert torch.allclose(mapper[cat, cat:cat + n], torch.full((n,), 1 / n))  # spread over the target tokens
    # after the last changed word the reference walk maps target positions to themselves (j → j), so the
    # target EOS takes the source's padding column at the same position, not the source EOS
    assert mapper[cat + n, cat + n] == 1 and mapper[cat + 1].sum() == 0
    assert torch.allclose(mapper.sum(0)[: cat + n], torch.cat([torch.ones(cat), torch.full((n,), 1 / n)]))


def test_token_alignment():
    assert align_tokens([0, 5, 6, 9], [0, 5, 7, 6, 9]) == [0, 1, -1, 2, 3]  # insertion
    assert align_tokens([0, 5, 6, 9], [0, 5, 9]) == [0, 1, 3]  # deletion
    assert align_tokens([0, 5, 6, 9], [0, 5, 8, 9]) == [0, 1, -1, 3]  # substitution: new token unaligned


def test_schedules_count_rows_as_the_references(tiny_pipe):
    alpha = cross_replace_schedule(tiny_pipe.tokenizer, [SOURCE, TARGET], 100, 0.6)
    assert alpha.shape == (101, 1, 77) and int(alpha[:, 0, 0].sum()) == int(0.6 * 101) == 60
    assert step_window(0.2, 100) == (0, 20) and step_window((0.1, 0.5), 50) == (5, 25)
    per_word = cross_replace_schedule(tiny_pipe.tokenizer, [SOURCE, TARGET], 10, {"default_": 1.0, "dog": (0.0, 0.3)})
    dog = word_token_indices(tiny_pipe.tokenizer, TARGET, "dog")[0]
    assert int(per_word[:, 0, dog].sum()) == 3 and int(per_word[:, 0, 1].sum()) == 11
    # EF p2pinv: the controller counts with N = T while T − T_skip steps run
    ef = EFDDPMP2P()
    controller = ef.controller(tiny_pipe, EditItem("i", "img", "x.png", SOURCE, TARGET))
    assert controller.cross_schedule.shape[0] == ef.num_steps + 1 and controller.self_window == (0, 20)


def test_local_blend_keeps_background_of_the_source(tiny_pipe):
    tok = tiny_pipe.tokenizer
    blend = LocalBlend(tok, [SOURCE, TARGET], ["cat", "dog"], resolution=8, threshold=0.3)
    cat, dog = word_token_indices(tok, SOURCE, "cat")[0], word_token_indices(tok, TARGET, "dog")[0]
    maps = torch.full((2, 2, 64, 77), 1e-3)
    maps.view(2, 2, 8, 8, 77)[0, :, :2, :2, cat] = 1.0  # source word: top-left corner
    maps.view(2, 2, 8, 8, 77)[1, :, 6:, 6:, dog] = 1.0  # target word: bottom-right corner
    store = SimpleNamespace(cur_step=1, maps=lambda kind, places, res, summed: [maps])
    latents = torch.randn(2, 4, 16, 16)
    out = blend(latents, store)
    mask = blend.mask(store, (16, 16))[1, 0].bool()
    assert mask[:6, :6].any() and mask[12:, 12:].all() and not mask[6:10, 6:10].any()  # union, 3×3 max-pool
    assert torch.equal(out[1][:, ~mask], latents[0][:, ~mask])
    assert torch.allclose(out[1][:, mask], latents[1][:, mask], atol=1e-6)
    assert torch.equal(out[0], latents[0])
    assert torch.equal(LocalBlend(tok, [SOURCE, TARGET], ["cat", "dog"], 8, start_step=1)(latents, store), latents)


def test_value_context_hook_changes_only_cross_attention_values(tiny_pipe):
    """The StyleDiffusion override point: a subclass replaces the value input of cross-attention."""
    class ScaledValues(AttentionController):
        seen: list = []

        def value_context(self, context, layer):
            self.seen.append(layer)
            return 2 * context

    x, context = unet_batch(tiny_pipe, [SOURCE])
    controller = ScaledValues(num_branches=1)
    with torch.no_grad():
        plain = tiny_pipe.unet_eps(x, 500, context)
        with attention_control(tiny_pipe, controller):
            scaled = tiny_pipe.unet_eps(x, 500, context)
    assert not torch.allclose(plain, scaled)
    assert len(controller.seen) == 7 and all(layer.is_cross for layer in controller.seen)


def test_sd_equivalent_resolution_ignores_a_lower_mid_block():
    """A three-level UNet (latent 16: down/up at 16 and 8, mid at 4, like the toy model): SD's 16² maps
    (LocalBlend, NS-LPIPS, StyleDiffusion's loss) are down/up maps, so they map to 8, not to the mid 4²."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2, norm_num_groups=16)
    resolutions = {(layer.place, layer.resolution) for layer in attention_layers(unet).values()}
    assert ("mid", 4) in resolutions
    assert sd_equivalent_resolution(unet, 16) == 8 and sd_equivalent_resolution(unet, 32) == 8


@torch.no_grad()
def test_unconditional_rows_run_fused_unless_the_controller_edits_them(tiny_pipe):
    """With explicit probabilities for the conditional rows, the unconditional rows skip materialisation
    unless ``needs_unconditional_probabilities``; the output is the same either way, and an unconditional
    edit still reaches those rows."""
    class Seen(AttentionController):
        def __init__(self, wants_uncond: bool, flatten_uncond: bool = False):
            super().__init__(num_branches=2)
            self.wants_uncond, self.flatten_uncond, self.batches = wants_uncond, flatten_uncond, set()

        def needs_probabilities(self, layer):
            return True

        def needs_unconditional_probabilities(self, layer):
            return self.wants_uncond

        def process(self, probs, layer):
            self.batches.add(probs.shape[0])
            return super().process(probs, layer)

        def edit_unconditional(self, probs, layer):
            return torch.full_like(probs, 1 / probs.shape[-1]) if self.flatten_uncond else probs

    x, context = unet_batch(tiny_pipe, [SOURCE, TARGET])
    reference = tiny_pipe.unet_eps(x, 500, context)
    outputs = {}
    for wants_uncond in (False, True):
        controller = Seen(wants_uncond)
        with attention_control(tiny_pipe, controller):
            outputs[wants_uncond] = tiny_pipe.unet_eps(x, 500, context)
        assert controller.batches == ({4} if wants_uncond else {2})  # rows materialised per call
    assert (outputs[False] - reference).abs().max() <= 1e-5 and (outputs[True] - reference).abs().max() <= 1e-5
    with attention_control(tiny_pipe, Seen(True, flatten_uncond=True)):
        flattened = tiny_pipe.unet_eps(x, 500, context)
    assert not torch.allclose(flattened[:2], reference[:2], atol=1e-3)  # the unconditional edit acts
    assert (flattened[2:] - reference[2:]).abs().max() <= 1e-5  # rows are independent
