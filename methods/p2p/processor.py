"""The attention processor that routes probabilities through a controller, and its installation.

``attention_control(pipe_or_unet, controller)`` installs one ``ControlledAttnProcessor`` per attention
layer for the duration of the block and restores the original processors in ``finally`` (also after
an exception). Layers for which ``controller.needs_probabilities(layer)`` is False at the current step
run the fused ``F.scaled_dot_product_attention``; the others materialise softmax(QKᵀ·scale) and pass
it through ``controller.process``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F

from methods.p2p.layers import AttentionLayer, attention_layers

if TYPE_CHECKING:
    from methods.p2p.store import AttentionController

def attention_probabilities(query, key, attn, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(Q Kᵀ · scale + mask) over keys; (B, H, Q, d) × (B, H, K, d) → (B, H, Q, K)."""
    dtype = query.dtype
    if attn.upcast_attention:
        query, key = query.float(), key.float()
    scores = query @ key.transpose(-1, -2) * attn.scale
    if mask is not None:
        scores = scores + mask
    if attn.upcast_softmax:
        scores = scores.float()
    return scores.softmax(dim=-1).to(dtype)


class ControlledAttnProcessor:
    """An attention processor that lets a controller see/edit the attention probabilities.

    ``__call__`` copies diffusers' ``AttnProcessor2_0.__call__`` (huggingface/diffusers@v0.42.1
    src/diffusers/models/attention_processor.py:2705): spatial/group norm, q/k/v projections, q/k norms,
    output projection, residual and rescale are that code's steps in that order. It differs in three
    places: ``to_v`` reads ``controller.value_context`` on cross-attention, the query count is checked
    against the layer's resolution, and ``controlled_attention`` replaces the fused kernel where the
    controller needs probabilities.
    """

    def __init__(self, controller: "AttentionController", layer: AttentionLayer) -> None:
        self.controller = controller
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, num_queries, _ = hidden_states.shape
        if num_queries != self.layer.resolution**2:
            raise ValueError(f"attention layer {self.layer.name}: {num_queries} queries, expected "
                             f"{self.layer.resolution}² (square latents of size unet.config.sample_size)")

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value_input = self.controller.value_context(context, self.layer) if self.layer.is_cross else context
        value = attn.to_v(value_input)

        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.controller.needs_probabilities(self.layer):
            hidden_states = self.controlled_attention(query, key, value, attn, attention_mask)
        else:
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=0.0, scale=attn.scale)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def controlled_attention(self, query, key, value, attn, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(QKᵀ·scale) V with the probabilities routed through the controller. When the batch
        holds unconditional rows that the controller neither edits nor needs (the P2P case), those rows
        take the fused kernel and only the conditional rows are materialised."""
        controller, half = self.controller, self.controller.num_branches
        if query.shape[0] == 2 * half and not controller.needs_unconditional_probabilities(self.layer):
            uncond_mask, cond_mask = (None, None) if mask is None else (mask[:half], mask[half:])
            uncond = F.scaled_dot_product_attention(query[:half], key[:half], value[:half], attn_mask=uncond_mask,
                                                    dropout_p=0.0, scale=attn.scale)
            probs = attention_probabilities(query[half:], key[half:], attn, cond_mask)
            return torch.cat([uncond, controller.process(probs, self.layer) @ value[half:]])
        probs = attention_probabilities(query, key, attn, mask)
        return controller.process(probs, self.layer) @ value


@contextmanager
def attention_control(pipe_or_unet, controller: "AttentionController") -> Iterator["AttentionController"]:
    """Install ``controller`` on every attention layer for the block; restore the originals in ``finally``."""
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    original = unet.attn_processors
    layers = attention_layers(unet)
    controller.bind(layers)
    unet.set_attn_processor({name: ControlledAttnProcessor(controller, layers[name]) for name in original})
    try:
        yield controller
    finally:
        unet.set_attn_processor(dict(original))  # set_attn_processor consumes the dict it is given
