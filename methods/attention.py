"""Prompt-to-Prompt attention control as diffusers attention processors.

Public API
----------
``attention_control(pipe_or_unet, controller)``
    Context manager: installs one ``ControlledAttnProcessor`` per attention layer for the duration of
    the block and restores the original processors in ``finally`` (also after an exception).
    Layers for which ``controller.needs_probabilities(layer)`` is False at the current step run the
    fused ``F.scaled_dot_product_attention``; the others materialise softmax(QKᵀ·scale) and pass it
    through ``controller.process``.

``AttentionController``
    Base class (records nothing, edits nothing). The sampling loop calls
    ``latents = controller.step_callback(latents)`` once after every denoising (or inversion) step;
    this advances ``controller.cur_step``. Override points for subclasses (StyleDiffusion/P2Plus):

    - ``value_context(context, layer)``: the text embedding fed to ``to_v`` of cross-attention
      (key and query are untouched). Default: unchanged.
    - ``edit_conditional(probs, layer)`` / ``edit_unconditional(probs, layer)``: edit the
      probabilities of the conditional / unconditional rows, shape (branches, heads, Q, K).
    - ``needs_probabilities(layer)``: return True where an override needs explicit probabilities.
    - ``needs_unconditional_probabilities(layer)``: return True where ``edit_unconditional`` acts;
      otherwise the unconditional rows of a layer with explicit probabilities run fused.
    - ``split_batch(tensor)``: (unconditional rows or None, conditional rows) of any batch-leading
      tensor, for the batch layout below.

    Batch layout: a UNet batch holds ``num_branches`` prompts (P2P: [source, target, ...]) either
    conditional only (B = branches) or unconditional then conditional (B = 2·branches, the order of
    ``methods.steps.guided_noise``). The P2P reference edits only the conditional rows.

``AttentionStore(num_branches=1, places=..., max_resolution=None, record_self=True)``
    Records the conditional-branch attention probabilities per layer, summed over steps;
    ``average(name)`` divides by the number of completed steps. ``maps(kind, places, resolution)``
    lists the averaged maps, ``aggregate_cross_attention(resolution, places, branch, heads)`` returns
    the (res, res, 77) mean over the chosen layers and heads (P2P ``aggregate_attention``).
    Typical use (NS-LPIPS mask, 16² at SD's 64² latent)::

        store = AttentionStore(max_resolution=None, record_self=False)
        with attention_control(pipe, store):
            ddim_inversion_loop(pipe, x0, cond, uncond, 1.0, on_step=store.step_callback)
        res = sd_equivalent_resolution(pipe.unet, 16)
        maps = store.aggregate_cross_attention(res, places=("up", "down"))      # (res, res, 77)
        mask = maps[..., word_token_indices(pipe.tokenizer, prompt, word)[0]]

``P2PController`` with a cross-attention mapping ``AttentionReplace`` (same word count),
``AttentionRefine`` (token alignment) or ``AttentionReweight`` (equalizer, optionally on top of
another mapping); optional ``LocalBlend``. ``build_p2p_controller`` picks them from prompts and
hyperparameters (the one entry point the P2P methods use).

The reference P2P controllers (google/prompt-to-prompt, EF copy ``prompt_to_prompt/ptp_classes.py``)
are classes that both schedule and map; here the mapping is a separate object so one controller
class (and one P2Plus subclass of it) serves replace, refine and reweight.

Sizes
-----
The references hard-code SD v1's geometry (64² latent; attention at 64/32/16 in down/up, 8 in mid):
stored maps ≤ 32² (``AttentionStore.forward``), LocalBlend on the 16² cross maps of down and up
(``down_cross[2:4] + up_cross[:3]``), self-attention replacement for maps ≤ 16² query tokens (P2P)
or ≤ 32² (P2Plus). ``sd_equivalent_resolution(unet, r)`` maps such an r to this UNet: r·latent/64,
rounded *up* to the nearest resolution the UNet has attention at (the largest one if none is that
large). SD: identity. The tiny test UNet (latent 16², attention at 16 and 8): 16 → 4 → 8, 32 → 8.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from methods.base import HyperparameterError, check_range

PLACES = ("down", "mid", "up")
SD_LATENT_SIZE = 64  # the latent size the references' hard-coded resolutions refer to
MAX_TOKENS = 77  # CLIP context length (the references' MAX_NUM_WORDS)


# ----------------------------------------------------------------------------------------------
# layers and sizes


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


# ----------------------------------------------------------------------------------------------
# prompts → token positions


def prompt_words(prompt: str) -> list[str]:
    """Words as the references split them: on single spaces."""
    return prompt.split(" ")


def word_token_spans(tokenizer, prompt: str) -> list[list[int]]:
    """For each word of ``prompt``, the positions of its BPE tokens in the tokenized prompt (BOS = 0).

    CLIP pre-tokenizes on whitespace, so tokenizing word by word gives the prompt's tokens; this is
    checked against the whole-prompt tokenization.
    """
    spans, position = [], 1
    for word in prompt_words(prompt):
        count = len(tokenizer(word).input_ids) - 2  # without BOS/EOS
        spans.append(list(range(position, position + count)))
        position += count
    whole = len(tokenizer(prompt).input_ids) - 2
    if position - 1 != whole:
        raise ValueError(f"prompt {prompt!r}: word-by-word tokenization gives {position - 1} tokens, "
                         f"the whole prompt {whole}; cannot locate words")
    if position >= MAX_TOKENS:
        raise ValueError(f"prompt {prompt!r} has {position - 1} tokens; at most {MAX_TOKENS - 2} fit in CLIP's context")
    return spans


def word_token_indices(tokenizer, prompt: str, word: str) -> list[int]:
    """Token positions of every occurrence of ``word`` (a word or several space-separated words)."""
    words, spans = prompt_words(prompt), word_token_spans(tokenizer, prompt)
    wanted = set(prompt_words(word))
    missing = wanted - set(words)
    if missing:
        raise ValueError(f"word(s) {sorted(missing)} not found in prompt {prompt!r} (words: {words})")
    return [pos for w, span in zip(words, spans) if w in wanted for pos in span]


# ----------------------------------------------------------------------------------------------
# the processor and its installation


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
    """An attention processor (AttnProcessor2_0 semantics) that lets a controller see/edit probabilities."""

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


# ----------------------------------------------------------------------------------------------
# controllers


class AttentionController:
    """Base controller: sees every attention call, edits nothing (see the module doc for the hooks)."""

    def __init__(self, num_branches: int = 1) -> None:
        if num_branches < 1:
            raise ValueError(f"num_branches={num_branches}: expected at least 1 prompt branch")
        self.num_branches = num_branches
        self.cur_step = 0
        self.layers: dict[str, AttentionLayer] = {}

    def bind(self, layers: dict[str, AttentionLayer]) -> None:
        """Called by ``attention_control`` with the UNet's layers before the first call."""
        self.layers = layers

    # hooks ------------------------------------------------------------------------------
    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        return False

    def needs_unconditional_probabilities(self, layer: AttentionLayer) -> bool:
        """True where ``edit_unconditional`` changes the unconditional rows (else they run fused)."""
        return False

    def value_context(self, context: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return context

    def edit_conditional(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return probs

    def edit_unconditional(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return probs

    # batch layout -----------------------------------------------------------------------
    def split_batch(self, tensor: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(unconditional rows or None, conditional rows) for B = branches or 2·branches."""
        batch, branches = tensor.shape[0], self.num_branches
        if batch == branches:
            return None, tensor
        if batch == 2 * branches:
            return tensor[:branches], tensor[branches:]
        raise ValueError(f"{type(self).__name__}: a UNet batch of {batch} is neither {branches} (conditional only) "
                         f"nor {2 * branches} (unconditional + conditional) rows for num_branches={branches}")

    def process(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        """Route (B, H, Q, K) probabilities through the unconditional/conditional edit hooks."""
        uncond, cond = self.split_batch(probs)
        cond = self.edit_conditional(cond, layer)
        if uncond is None:
            return cond
        return torch.cat([self.edit_unconditional(uncond, layer), cond])

    def step_callback(self, latents: torch.Tensor) -> torch.Tensor:
        """Called by the sampling loop after each step; returns the (possibly changed) latents."""
        self.cur_step += 1
        return latents


class AttentionStore(AttentionController):
    """Records conditional-branch attention probabilities (branches, heads, Q, K) per layer, summed over steps.

    ``places``/``max_resolution``/``record_self`` choose the recorded layers (the references keep every
    map ≤ 32² at SD size, to bound memory; ``max_resolution=None`` keeps all). What is recorded is the
    probabilities actually used, i.e. after a subclass's edits (the reference edits the stored tensor
    in place, so its store holds the edited maps too).
    """

    def __init__(self, num_branches: int = 1, places: Sequence[str] = PLACES, max_resolution: int | None = None,
                 record_self: bool = True) -> None:
        super().__init__(num_branches)
        unknown = set(places) - set(PLACES)
        if unknown:
            raise ValueError(f"AttentionStore places={list(places)}: unknown {sorted(unknown)}; expected a subset of {PLACES}")
        self.places = tuple(places)
        self.max_resolution = max_resolution
        self.record_self = record_self
        self.step_maps: dict[str, torch.Tensor] = {}  # the current step's maps
        self.summed_maps: dict[str, torch.Tensor] = {}  # Σ over completed steps

    def records(self, layer: AttentionLayer) -> bool:
        return (layer.place in self.places and (layer.is_cross or self.record_self)
                and (self.max_resolution is None or layer.resolution <= self.max_resolution))

    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        return self.records(layer)

    def process(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        probs = super().process(probs, layer)
        if self.records(layer):
            self.step_maps[layer.name] = self.split_batch(probs)[1].detach()
        return probs

    def step_callback(self, latents: torch.Tensor) -> torch.Tensor:
        for name, maps in self.step_maps.items():
            self.summed_maps[name] = self.summed_maps[name] + maps if name in self.summed_maps else maps.clone()
        self.step_maps = {}
        return super().step_callback(latents)

    def reset(self) -> None:
        self.cur_step, self.step_maps, self.summed_maps = 0, {}, {}

    def average(self, name: str) -> torch.Tensor:
        """Mean over completed steps of one layer's maps, (branches, heads, Q, K)."""
        if self.cur_step == 0 or name not in self.summed_maps:
            raise ValueError(f"AttentionStore has no maps for layer {name!r} (steps completed: {self.cur_step}; "
                             f"recorded layers: {sorted(self.summed_maps)})")
        return self.summed_maps[name] / self.cur_step

    def recorded_layers(self, kind: str, places: Sequence[str], resolution: int | None) -> list[AttentionLayer]:
        """Recorded layers of a kind ('cross'/'self') in ``places`` (at ``resolution`` if given), UNet order."""
        return [layer for name, layer in self.layers.items() if name in self.summed_maps and layer.kind == kind
                and layer.place in places and (resolution is None or layer.resolution == resolution)]

    def maps(self, kind: str = "cross", places: Sequence[str] = PLACES, resolution: int | None = None,
             summed: bool = False) -> list[torch.Tensor]:
        """Step-averaged (or summed) maps of the selected layers, each (branches, heads, Q, K)."""
        layers = self.recorded_layers(kind, places, resolution)
        if not layers:
            raise ValueError(f"AttentionStore: no recorded {kind}-attention maps in places {list(places)} at "
                             f"resolution {resolution}; recorded: "
                             f"{sorted({(l.place, l.kind, l.resolution) for l in self.recorded_layers(kind, PLACES, None)})}")
        return [self.summed_maps[l.name] if summed else self.average(l.name) for l in layers]

    def aggregate_cross_attention(self, resolution: int, places: Sequence[str] = ("up", "down"), branch: int = 0,
                                  heads: Sequence[int] | None = None) -> torch.Tensor:
        """(res, res, 77): cross-attention of one branch averaged over steps, the chosen layers and heads."""
        selected = []
        for maps in self.maps("cross", places, resolution):
            maps = maps[branch] if heads is None else maps[branch][list(heads)]
            selected.append(maps.reshape(maps.shape[0], resolution, resolution, maps.shape[-1]))
        return torch.cat(selected).mean(0)


# ----------------------------------------------------------------------------------------------
# cross-attention mappings (source branch → each target branch)


def replacement_mapper(tokenizer, source: str, target: str) -> torch.Tensor:
    """(77, 77) matrix M with target_attention[..., n] = Σ_w source_attention[..., w] · M[w, n].

    Words are compared position by position (the prompts must have the same word count). Unchanged
    words map their tokens one to one. A changed word spreads each of its source tokens evenly over
    its target tokens (1/len each; one to one when the counts match). After the last changed word
    every remaining target position j maps to itself, as the reference `seq_aligner.get_replacement_mapper`
    walks it (its walk stops when either index reaches 77, so when the source is k tokens longer the
    last k positions stay unmapped); this only matters when a swap changes the token count.
    """
    source_words, target_words = prompt_words(source), prompt_words(target)
    if len(source_words) != len(target_words):
        raise ValueError(f"AttentionReplace needs prompts with the same number of words: source {source!r} has "
                         f"{len(source_words)}, target {target!r} has {len(target_words)}; use the 'refine' mode")
    source_spans, target_spans = word_token_spans(tokenizer, source), word_token_spans(tokenizer, target)
    changed = [i for i, (a, b) in enumerate(zip(source_words, target_words)) if a != b]
    mapper = torch.zeros(MAX_TOKENS, MAX_TOKENS)
    mapper[0, 0] = 1  # BOS
    last = changed[-1] if changed else -1
    for i in range(last + 1):
        src, tgt = source_spans[i], target_spans[i]
        if len(src) == len(tgt):
            mapper[src, tgt] = 1
        else:
            for n in tgt:
                mapper[src, n] = 1 / len(tgt)
    source_next = source_spans[last][-1] + 1 if changed else 1
    target_next = target_spans[last][-1] + 1 if changed else 1
    tail = torch.arange(target_next, target_next + MAX_TOKENS - max(source_next, target_next))
    mapper[tail, tail] = 1
    return mapper


def align_tokens(source_ids: Sequence[int], target_ids: Sequence[int]) -> list[int]:
    """Global alignment (match +1, mismatch −1, gap 0): for each target token its source token or −1.

    Dynamic programming over prefixes; on score ties the traceback prefers, in this order, leaving
    the target token unaligned, skipping the source token, then pairing them — the preference order
    of the reference aligner, so ties resolve the same way.
    """
    rows, cols = len(source_ids) + 1, len(target_ids) + 1
    score = [[0] * cols for _ in range(rows)]  # gap = 0, so the borders are 0
    move = [["target"] * cols for _ in range(rows)]
    for i in range(1, rows):
        move[i][0] = "source"
    for i in range(1, rows):
        for j in range(1, cols):
            pair = score[i - 1][j - 1] + (1 if source_ids[i - 1] == target_ids[j - 1] else -1)
            score[i][j] = max(score[i][j - 1], score[i - 1][j], pair)
            if score[i][j] == score[i][j - 1]:
                move[i][j] = "target"  # target token j−1 unaligned
            elif score[i][j] == score[i - 1][j]:
                move[i][j] = "source"  # source token i−1 skipped
            else:
                move[i][j] = "pair"
    aligned = [-1] * len(target_ids)
    i, j = rows - 1, cols - 1
    while i > 0 or j > 0:
        step = move[i][j]
        if step == "pair":
            aligned[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif step == "target":
            j -= 1
        else:
            i -= 1
    return aligned


def refinement_mapper(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (77,), weight (77,)): target token n takes source column index[n] where weight[n] = 1.

    Tokens (BOS…EOS) are globally aligned; unaligned target tokens keep their own attention
    (weight 0). Padding positions after the target's EOS map to themselves (weight 1), as in the
    reference `seq_aligner.get_refinement_mapper`.
    """
    source_ids, target_ids = tokenizer(source).input_ids, tokenizer(target).input_ids
    aligned = align_tokens(source_ids, target_ids)
    index = torch.arange(MAX_TOKENS)
    weight = torch.ones(MAX_TOKENS)
    index[: len(aligned)] = torch.tensor([max(a, 0) for a in aligned])
    weight[: len(aligned)] = torch.tensor([float(a >= 0) for a in aligned])
    return index, weight


class CrossAttentionMapping:
    """Maps source cross-attention (H, Q, 77) to proposals for the targets (T, H, Q, 77)."""

    def __call__(self, source: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AttentionReplace(CrossAttentionMapping):
    """Word swap (same word count): target ← einsum('hqw,bwn->bhqn', source, mapper)."""

    def __init__(self, tokenizer, prompts: Sequence[str]) -> None:
        self.mapper = torch.stack([replacement_mapper(tokenizer, prompts[0], p) for p in prompts[1:]])

    def __call__(self, source, targets):
        return torch.einsum("hqw,bwn->bhqn", source, self.mapper.to(source))


class AttentionRefine(CrossAttentionMapping):
    """Added/changed phrases: aligned target tokens take the source column, new tokens keep their own."""

    def __init__(self, tokenizer, prompts: Sequence[str]) -> None:
        pairs = [refinement_mapper(tokenizer, prompts[0], p) for p in prompts[1:]]
        self.index = torch.stack([index for index, _ in pairs])  # (T, 77)
        self.weight = torch.stack([weight for _, weight in pairs])  # (T, 77)

    def __call__(self, source, targets):
        taken = source[:, :, self.index.to(source.device)].permute(2, 0, 1, 3)  # (T, H, Q, 77)
        weight = self.weight.to(source)[:, None, None, :]
        return taken * weight + targets * (1 - weight)


def equalizer(tokenizer, prompt: str, words: Sequence[str], values: Sequence[float]) -> torch.Tensor:
    """(77,) per-token scale: ``values[k]`` on the tokens of ``words[k]``, 1 elsewhere (P2P get_equalizer)."""
    if len(words) != len(values):
        raise ValueError(f"equalizer: {len(words)} words {list(words)} but {len(values)} values {list(values)}")
    scale = torch.ones(MAX_TOKENS)
    for word, value in zip(words, values):
        scale[word_token_indices(tokenizer, prompt, word)] = float(value)
    return scale


class AttentionReweight(CrossAttentionMapping):
    """Scale target token columns by an equalizer, on top of ``base`` (replace/refine) or the source maps."""

    def __init__(self, equalizers: torch.Tensor, base: CrossAttentionMapping | None = None) -> None:
        self.equalizers = equalizers  # (T, 77)
        self.base = base

    def __call__(self, source, targets):
        proposal = source.expand_as(targets) if self.base is None else self.base(source, targets)
        return proposal * self.equalizers.to(source)[:, None, None, :]


# ----------------------------------------------------------------------------------------------
# schedules


def step_window(bounds, rows: int) -> tuple[int, int]:
    """(start, end) rows [int(s·rows), int(e·rows)) of a fraction or (start, end) pair of fractions."""
    start, end = (0.0, float(bounds)) if isinstance(bounds, (int, float)) else (float(bounds[0]), float(bounds[1]))
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"replacement steps {bounds!r}: expected a fraction in [0, 1] or a pair 0 ≤ start ≤ end ≤ 1")
    return int(start * rows), int(end * rows)


def cross_replace_schedule(tokenizer, prompts: Sequence[str], num_steps: int, cross_replace_steps) -> torch.Tensor:
    """α (num_steps+1, targets, 77) ∈ {0,1}: rows [int(s·(N+1)), int(e·(N+1))) are 1 (P2P α has N+1 rows).

    ``cross_replace_steps``: a fraction c (→ (0, c)), a (start, end) pair, or a mapping with a
    'default_' entry and per-word entries {word in the target prompt: fraction or pair}.
    """
    spec = dict(cross_replace_steps) if isinstance(cross_replace_steps, Mapping) else {"default_": cross_replace_steps}
    spec.setdefault("default_", (0.0, 1.0))
    rows = num_steps + 1
    alpha = torch.zeros(rows, len(prompts) - 1, MAX_TOKENS)
    start, end = step_window(spec.pop("default_"), rows)
    alpha[start:end] = 1
    for word, bounds in spec.items():
        start, end = step_window(bounds, rows)
        for k, prompt in enumerate(prompts[1:]):
            if word in prompt_words(prompt):
                tokens = word_token_indices(tokenizer, prompt, word)
                alpha[:, k, tokens] = 0
                alpha[start:end, k, tokens] = 1
    return alpha


# ----------------------------------------------------------------------------------------------
# P2P


class LocalBlend:
    """Keep the latents outside the edited words' region equal to the source branch.

    mask = cross maps of the blend words (store sum over steps, mean over the chosen layers and heads)
    → 3×3 max-pool → nearest resize to the latent size → divide by the max → > threshold; union of
    the source mask and each target mask; x_t^k ← x_t^src + mask·(x_t^k − x_t^src). Applied after
    step ``start_step`` (NTI notebook: int(0.2·N); original P2P: 0).
    """

    def __init__(self, tokenizer, prompts: Sequence[str], words: Sequence[str], resolution: int,
                 threshold: float = 0.3, start_step: int = 0, places: Sequence[str] = ("down", "up")) -> None:
        if len(words) != len(prompts):
            raise ValueError(f"LocalBlend: {len(words)} blend words {list(words)} for {len(prompts)} prompts")
        self.word_alpha = torch.zeros(len(prompts), MAX_TOKENS)
        for k, (prompt, word) in enumerate(zip(prompts, words)):
            self.word_alpha[k, word_token_indices(tokenizer, prompt, word)] = 1
        self.resolution, self.threshold, self.start_step, self.places = resolution, threshold, start_step, tuple(places)

    def mask(self, store: AttentionStore, latent_hw: tuple[int, int]) -> torch.Tensor:
        res = self.resolution
        maps = [m.reshape(m.shape[0], m.shape[1], res, res, MAX_TOKENS)
                for m in store.maps("cross", self.places, res, summed=True)]
        maps = torch.cat(maps, dim=1)  # (branches, layers·heads, res, res, 77)
        word_maps = (maps * self.word_alpha.to(maps)[:, None, None, None, :]).sum(-1).mean(1, keepdim=True)
        pooled = F.max_pool2d(word_maps, kernel_size=3, stride=1, padding=1)
        mask = F.interpolate(pooled, size=latent_hw)
        mask = mask / mask.amax(dim=(2, 3), keepdim=True)
        mask = mask > self.threshold
        return (mask[:1] | mask).to(maps.dtype)

    def __call__(self, latents: torch.Tensor, store: AttentionStore) -> torch.Tensor:
        if store.cur_step <= self.start_step:
            return latents
        mask = self.mask(store, tuple(latents.shape[2:])).to(latents)
        return latents[:1] + mask * (latents - latents[:1])


class P2PController(AttentionStore):
    """Prompt-to-Prompt: branch 0 is the source, branches 1.. are targets; only conditional rows are edited.

    Step indexing (``cur_step`` = completed steps, advanced by ``step_callback``):
    - cross-attention: target ← α·mapping(source, target) + (1−α)·target with α = schedule[cur_step]
      (rows [int(c0·(N+1)), int(c1·(N+1))) are 1);
    - self-attention: target ← source for steps [int(N·s0), int(N·s1)) on maps ≤ ``self_max_resolution``².
    ``num_steps`` is the N of these formulas; EF-DDPM's p2pinv passes T while executing T−T_skip steps
    (the caller decides). Extension points for P2Plus: ``edit_unconditional`` (τ_u: use
    ``replace_self_attention`` there), ``value_context`` (StyleDiffusion's value input), and
    ``needs_probabilities``.
    """

    def __init__(self, prompts: Sequence[str], mapping: CrossAttentionMapping, cross_schedule: torch.Tensor,
                 self_window: tuple[int, int], self_max_resolution: int, local_blend: LocalBlend | None = None,
                 store_places: Sequence[str] = PLACES, store_max_resolution: int | None = 0,
                 store_self: bool = False) -> None:
        super().__init__(len(prompts), store_places, store_max_resolution, store_self)
        if len(prompts) < 2:
            raise ValueError(f"P2PController needs a source and at least one target prompt, got {list(prompts)}")
        self.mapping = mapping
        self.cross_schedule = cross_schedule
        self.self_window = self_window
        self.self_max_resolution = self_max_resolution
        self.local_blend = local_blend

    def records(self, layer: AttentionLayer) -> bool:
        blend = self.local_blend
        needed_by_blend = (blend is not None and layer.is_cross and layer.place in blend.places
                           and layer.resolution == blend.resolution)
        return needed_by_blend or super().records(layer)

    def cross_alpha(self) -> torch.Tensor:
        if self.cur_step >= self.cross_schedule.shape[0]:
            raise ValueError(f"P2PController: step {self.cur_step} is past the cross-replacement schedule of "
                             f"{self.cross_schedule.shape[0]} rows (num_steps + 1); num_steps is too small")
        return self.cross_schedule[self.cur_step]

    def replaces_self(self, layer: AttentionLayer) -> bool:
        start, end = self.self_window
        return not layer.is_cross and layer.resolution <= self.self_max_resolution and start <= self.cur_step < end

    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        if layer.is_cross:
            return bool(self.cross_alpha().any()) or self.records(layer)
        return self.replaces_self(layer) or self.records(layer)

    @staticmethod
    def replace_self_attention(probs: torch.Tensor) -> torch.Tensor:
        """Every branch takes branch 0's self-attention (probs: (branches, H, Q, Q))."""
        return probs[:1].expand_as(probs)

    def edit_conditional(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        if layer.is_cross:
            alpha = self.cross_alpha().to(probs)[:, None, None, :]  # (targets, 1, 1, 77)
            if not alpha.any():
                return probs
            source, targets = probs[0], probs[1:]
            edited = self.mapping(source, targets) * alpha + targets * (1 - alpha)
            return torch.cat([probs[:1], edited])
        if self.replaces_self(layer):
            return self.replace_self_attention(probs)
        return probs

    def step_callback(self, latents: torch.Tensor) -> torch.Tensor:
        latents = super().step_callback(latents)
        if self.local_blend is not None:
            latents = self.local_blend(latents, self)
        return latents


P2P_MODES = ("auto", "auto_chars", "replace", "refine")


def build_p2p_controller(pipe, source_prompt: str, target_prompt: str, num_steps: int, cross_replace_steps,
                         self_replace_steps, mode: str = "auto", self_max_sd_resolution: int = 16,
                         blend_words: tuple[str, str] | None = None, blend_threshold: float = 0.3,
                         blend_start: float = 0.0, equalizer_params: Mapping | None = None,
                         controller_class: type[P2PController] = P2PController, **controller_kwargs) -> P2PController:
    """The P2P controller for [source, target] (the one builder the P2P methods share).

    mode 'auto' = the EF-DDPM reference rule: replace when the word counts match, else refine; 'auto_chars' =
    replace when the space-stripped prompts have equal character counts (PnPInversion's StyleDiffusion run).
    ``self_max_sd_resolution`` (16 for P2P, 32 for P2Plus) and LocalBlend's 16² maps are SD sizes
    mapped with ``sd_equivalent_resolution``. ``blend_start`` is a fraction of ``num_steps``.
    ``equalizer_params`` = {"words": [...], "values": [...]} (target-prompt words) adds AttentionReweight.
    """
    if mode not in P2P_MODES:
        raise ValueError(f"P2P mode={mode!r}: expected one of {P2P_MODES}")
    tokenizer, prompts = pipe.tokenizer, [source_prompt, target_prompt]
    same_words = len(prompt_words(source_prompt)) == len(prompt_words(target_prompt))
    if mode == "replace" and not same_words:
        raise ValueError(f"P2P mode='replace' needs prompts with the same number of words; source {source_prompt!r} "
                         f"has {len(prompt_words(source_prompt))}, target {target_prompt!r} has "
                         f"{len(prompt_words(target_prompt))}; use mode='refine' or 'auto'")
    same_chars = len(source_prompt.strip(" ")) == len(target_prompt.strip(" "))  # auto_chars: PnPInversion's StyleDiffusion rule
    use_replace = mode == "replace" or (mode == "auto" and same_words) or (mode == "auto_chars" and same_chars)
    if use_replace and not same_words:
        raise ValueError(f"P2P mode={mode!r} chose AttentionReplace for prompts with different word counts: "
                         f"{source_prompt!r}, {target_prompt!r}")
    mapping: CrossAttentionMapping = (AttentionReplace if use_replace else AttentionRefine)(tokenizer, prompts)
    if equalizer_params:
        scale = equalizer(tokenizer, target_prompt, list(equalizer_params["words"]), list(equalizer_params["values"]))
        mapping = AttentionReweight(scale[None], base=mapping)
    local_blend = None
    if blend_words is not None:
        local_blend = LocalBlend(tokenizer, prompts, list(blend_words), sd_equivalent_resolution(pipe.unet, 16),
                                 threshold=blend_threshold, start_step=int(blend_start * num_steps))
    return controller_class(
        prompts, mapping, cross_replace_schedule(tokenizer, prompts, num_steps, cross_replace_steps),
        step_window(self_replace_steps, num_steps),
        sd_equivalent_resolution(pipe.unet, self_max_sd_resolution), local_blend, **controller_kwargs,
    )


# ----------------------------------------------------------------------------------------------
# P2P editing hyperparameters shared by the P2P methods (ddim_p2p, ef_ddpm_p2p)


def _fraction_spec(owner: object, name: str):
    """Validate a replacement-steps hparam (fraction, [start, end], or {word: fraction|pair, 'default_': ...})."""
    value = getattr(owner, name)
    entries = value.values() if isinstance(value, Mapping) else [value]
    for entry in entries:
        try:
            step_window(entry if isinstance(entry, (int, float)) else tuple(entry), 1)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{type(owner).__name__}.{name}={value!r}: expected a fraction in [0, 1], a pair "
                             f"[start, end] of fractions, or a mapping of such per word ({err})") from err
    if isinstance(value, Mapping):
        return {str(k): v if isinstance(v, (int, float)) else tuple(v) for k, v in value.items()}
    return value if isinstance(value, (int, float)) else tuple(value)


OPTIONAL_CONTROL = (False, True, "if_available")  # local_blend / reweight values
DEFAULT_REWEIGHT = 2.0  # ×2 on the target blend word (PnPInversion run_editing_p2p.py:129-132; StyleDiffusion CLI)


@dataclass
class P2PEditHparams:
    """Prompt-to-Prompt edit hyperparameters (mixin for method dataclasses; all are *edit* hparams).

    cross_replace_steps: P2P ``cross_replace_steps`` (EF ``--xa``): rows [0, int(c·(N+1))) of α.
    self_replace_steps:  P2P ``self_replace_steps`` (EF ``--sa``): steps [int(N·s0), int(N·s1)).
    p2p_mode:            'auto' (replace if equal word counts else refine; EF rule), 'replace', 'refine'.
    self_replace_max_resolution: maps ≤ r² (SD sizes) get self-attention replacement (P2P 16, P2Plus 32).
    local_blend:         use LocalBlend with the item's blend_words (threshold, start fraction); "if_available":
                         only for items that have blend words (PnPInversion's PIE-Bench runs).
    reweight:            AttentionReweight with the item's ``extra["eq_params"]`` = {"words", "values"}, else ×2 on
                         the target blend word; "if_available": only for items that have either.
    """

    cross_replace_steps: float | tuple[float, float] | dict[str, float | tuple[float, float]] = 0.8
    self_replace_steps: float | tuple[float, float] = 0.4
    p2p_mode: str = "auto"
    self_replace_max_resolution: int = 16
    local_blend: bool | str = False
    blend_threshold: float = 0.3
    blend_start: float = 0.0
    reweight: bool | str = False

    def check_p2p_hparams(self) -> None:
        try:
            self.cross_replace_steps = _fraction_spec(self, "cross_replace_steps")
            self.self_replace_steps = _fraction_spec(self, "self_replace_steps")
        except ValueError as err:
            raise HyperparameterError(str(err)) from err
        if isinstance(self.self_replace_steps, dict):
            raise HyperparameterError(f"{type(self).__name__}.self_replace_steps={self.self_replace_steps!r}: "
                                      "per-word values apply to cross-attention only; use a fraction or a pair")
        if self.p2p_mode not in P2P_MODES:
            raise HyperparameterError(f"{type(self).__name__}.p2p_mode={self.p2p_mode!r}: expected one of {P2P_MODES}")
        for name in ("local_blend", "reweight"):
            if getattr(self, name) not in OPTIONAL_CONTROL:
                raise HyperparameterError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: expected one of "
                                          f"{OPTIONAL_CONTROL}")
        check_range(self, "self_replace_max_resolution", 1, 4096)
        check_range(self, "blend_threshold", 0.0, 1.0)
        check_range(self, "blend_start", 0.0, 1.0)

    def p2p_controller(self, pipe, item, num_steps: int, **builder_kwargs) -> P2PController:
        """The controller for [item.source_prompt, item.target_prompt] with these hparams.

        ``builder_kwargs`` go to ``build_p2p_controller`` (``controller_class`` and its extra arguments,
        e.g. StyleDiffusion's P2Plus controller)."""
        blend_words = tuple(item.blend_words) if self.local_blend and item.blend_words is not None else None
        if self.local_blend is True and blend_words is None:
            raise ValueError(f"{type(self).__name__}.local_blend=True but item {item.item_id!r} has no blend_words")
        eq_params = None
        if self.reweight:
            eq_params = item.extra.get("eq_params") or (
                {"words": [item.blend_words[1]], "values": [DEFAULT_REWEIGHT]} if item.blend_words else None)
            if self.reweight is True and not eq_params:
                raise ValueError(f"{type(self).__name__}.reweight=True but item {item.item_id!r} has neither "
                                 "extra['eq_params'] = {'words': [...], 'values': [...]} nor blend_words")
        return build_p2p_controller(
            pipe, item.source_prompt, item.target_prompt, num_steps, self.cross_replace_steps, self.self_replace_steps,
            mode=self.p2p_mode, self_max_sd_resolution=self.self_replace_max_resolution, blend_words=blend_words,
            blend_threshold=self.blend_threshold, blend_start=self.blend_start, equalizer_params=eq_params,
            **builder_kwargs,
        )
