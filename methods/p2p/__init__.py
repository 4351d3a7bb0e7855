"""Prompt-to-Prompt attention control as diffusers attention processors.

One module per concern (import the names from here):

- ``layers``: the UNet's attention layers (place, self/cross, resolution) and SD-equivalent sizes.
- ``processor``: ``ControlledAttnProcessor`` (a copy of diffusers' ``AttnProcessor2_0`` with a
  controller hook) and the ``attention_control`` context manager that installs it.
- ``store``: ``AttentionController`` (hooks, batch layout) and ``AttentionStore`` (records maps).
- ``seq_aligner``: prompt words → token positions; replace and refine token mappers.
- ``mappers``: cross-attention mappings ``AttentionReplace`` / ``AttentionRefine`` / ``AttentionReweight``.
- ``local_blend``: ``LocalBlend``.
- ``controller``: ``P2PController``, its step schedules and ``build_p2p_controller``.
- ``hparams``: the ``P2PEditHparams`` mixin of the P2P method dataclasses.
- ``item_batch``: ``ItemBatchController`` (``batch_controller``), per-item controllers over one UNet batch of several items.
"""

from methods.p2p.controller import P2P_MODES, P2PController, build_p2p_controller, cross_replace_schedule, step_window
from methods.p2p.hparams import P2PEditHparams
from methods.p2p.item_batch import ItemBatchController, batch_controller
from methods.p2p.layers import PLACES, AttentionLayer, attention_layers, sd_equivalent_resolution
from methods.p2p.local_blend import LocalBlend
from methods.p2p.mappers import AttentionRefine, AttentionReplace, AttentionReweight, CrossAttentionMapping, equalizer
from methods.p2p.processor import ControlledAttnProcessor, attention_control
from methods.p2p.seq_aligner import (
                                     MAX_TOKENS,
                                     align_tokens,
                                     prompt_words,
                                     refinement_mapper,
                                     replacement_mapper,
                                     word_token_indices,
                                     word_token_spans,
)
from methods.p2p.store import AttentionController, AttentionStore

__all__ = [
    "MAX_TOKENS", "P2P_MODES", "PLACES", "AttentionController", "AttentionLayer", "AttentionRefine", "AttentionReplace",
    "AttentionReweight", "AttentionStore", "ControlledAttnProcessor", "CrossAttentionMapping", "ItemBatchController", "LocalBlend",
    "P2PController", "P2PEditHparams", "align_tokens", "attention_control", "attention_layers", "batch_controller",
    "build_p2p_controller",
    "cross_replace_schedule", "equalizer", "prompt_words", "refinement_mapper", "replacement_mapper",
    "sd_equivalent_resolution", "step_window", "word_token_indices", "word_token_spans",
]
