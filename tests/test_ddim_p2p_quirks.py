"""ddim_p2p_ef reference_quirks: the EF repo's p2pddim controller call pattern (docs/methods.md#ddim-p2p-ef-quirks).

The reference behaviour is re-implemented here from its description, independently of methods/: a controller
with LOW_RESOURCE=True counts attention-layer calls, skips the first ``L`` of every ``2L`` (taking them for the
unconditional pass), advances its step once per ``2L`` calls, and edits the whole (4·heads) batch reshaped as
2 prompts × (2·heads). Both are fed the same random probabilities for every layer of every UNet call."""

from __future__ import annotations

import torch

from methods.ddim_p2p import DDIMP2P, LowResourceQuirkController
from methods.p2p import build_p2p_controller

STEPS, HEADS = 10, 2


def reference_edit(attn, layer, controller, cross_alpha_row, self_window, self_max):
    """The reference AttentionControlEdit.forward on a (4·H, Q, K) batch with batch_size = 2 prompts."""
    h = attn.shape[0] // 2
    attn = attn.reshape(2, h, *attn.shape[1:]).clone()
    base, replace = attn[0], attn[1:]
    if layer.is_cross:
        alpha = controller.cross_schedule[cross_alpha_row][:, None, None, :]
        attn[1:] = controller.mapping(base, replace) * alpha + replace * (1 - alpha)
    elif self_window[0] <= cross_alpha_row < self_window[1] and layer.resolution <= self_max:
        attn[1:] = base[None].expand_as(replace)
    return attn.reshape(2 * h, *attn.shape[2:])


def test_quirk_controller_edits_odd_calls_at_half_step_on_all_rows(tiny_pipe):
    kwargs = dict(num_steps=STEPS, cross_replace_steps=0.8, self_replace_steps=0.4, mode="replace")
    ours = build_p2p_controller(tiny_pipe, "a cat sat", "a dog sat", controller_class=LowResourceQuirkController,
                                **kwargs)
    from methods.p2p import attention_layers

    layers = list(attention_layers(tiny_pipe.unet).values())
    ours.bind({layer.name: layer for layer in layers})
    self_max = ours.self_max_resolution
    generator = torch.Generator().manual_seed(0)
    ref_calls, edited_calls = 0, []
    for call in range(STEPS):  # one UNet call per step, batch [∅_src, ∅_tgt, c_src, c_tgt]
        edited_here = False
        for layer in layers:
            k = 77 if layer.is_cross else layer.resolution ** 2
            probs = torch.rand(4, HEADS, layer.resolution ** 2, k, generator=generator).softmax(-1)
            # the reference: LOW_RESOURCE=True → the first len(layers) calls of every 2·len(layers) are skipped
            skipped = ref_calls % (2 * len(layers)) < len(layers)
            ref_step = ref_calls // (2 * len(layers))
            flat = probs.reshape(4 * HEADS, *probs.shape[2:])
            expected = flat if skipped else reference_edit(flat, layer, ours, ref_step, ours.self_window, self_max)
            ref_calls += 1
            got = ours.process(probs, layer) if ours.needs_probabilities(layer) else probs
            torch.testing.assert_close(got.reshape(flat.shape), expected, rtol=0, atol=0)
            changed = not torch.equal(got, probs)
            edited_here |= changed
            if changed:  # every row of the batch may change, but not the ∅ ones: they are the "source"
                assert torch.equal(got[:2], probs[:2])
                assert not torch.equal(got[2:], probs[2:])
        if edited_here:
            edited_calls.append(call)
        ours.step_callback(torch.zeros(2, 4, 8, 8))
    assert edited_calls == [1, 3, 5, 7, 9]  # odd UNet calls only
    # both conditional rows took mapped unconditional maps: the source branch is edited too (not textbook P2P)


def test_textbook_p2p_never_touches_the_source_or_unconditional_rows(tiny_pipe):
    method = DDIMP2P(num_steps=STEPS, cross_replace_steps=0.8, self_replace_steps=0.4, p2p_mode="replace")
    assert method.reference_quirks is False
    controller = build_p2p_controller(tiny_pipe, "a cat sat", "a dog sat", num_steps=STEPS, cross_replace_steps=0.8,
                                      self_replace_steps=0.4, mode="replace")
    from methods.p2p import attention_layers

    layers = attention_layers(tiny_pipe.unet)
    controller.bind(layers)
    cross = next(layer for layer in layers.values() if layer.is_cross)
    probs = torch.rand(2, HEADS, cross.resolution ** 2, 77).softmax(-1)  # conditional rows only reach process
    out = controller.process(probs, cross)
    assert torch.equal(out[0], probs[0]) and not torch.equal(out[1], probs[1])


def test_quirk_mode_runs_end_to_end_and_differs_from_textbook(tiny_pipe, source_image):
    from bench.data.item import EditItem

    item = EditItem("e", "e", "unused.png", "a cat sat", "a dog sat")
    common = dict(num_steps=4, inversion_guidance_scale=3.5, source_guidance_scale=3.5, guidance_scale=7.5,
                  cross_replace_steps=0.8, self_replace_steps=0.4, p2p_mode="replace")
    textbook, quirks = DDIMP2P(**common), DDIMP2P(**common, reference_quirks=True)
    inversion = textbook.invert(tiny_pipe, source_image, item.source_prompt, torch.Generator().manual_seed(0))
    a = textbook.edit_latents(tiny_pipe, inversion, item)
    b = quirks.edit_latents(tiny_pipe, inversion, item)
    assert a.shape == b.shape == (2, *inversion.tensors["x_T"].shape[1:])
    assert not torch.allclose(a[0], b[0])  # the quirk edits the source branch's conditional rows as well
