"""Stage ``clip``: the generator's CLIP (text tower → text_encoder, vision tower → image_encoder)."""

from __future__ import annotations

import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from bench.toyworld import evaluators as ev
from bench.toyworld.generator import all_captions
from bench.toyworld.train.common import (
    POOL_GENERATOR,
    TrainConfig,
    export_dir,
    finish_export,
    heldout,
    make_pool,
    staging_dir,
    to_tensor,
    train_loop,
    warmup_lr,
)

# ----------------------------------------------------------------------------------------------
# stage: generator CLIP (transformers)


def gen_clip_config():
    from transformers import CLIPConfig

    from bench.toyworld.tokenizer import build_vocab

    vocab = build_vocab()[0]
    return CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=len(vocab) - 2,
                         eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1, projection_dim=128,
                         attention_dropout=0.0, dropout=0.0),
        vision_config=dict(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=2,
                           image_size=64, patch_size=8, projection_dim=128, attention_dropout=0.0, dropout=0.0),
        projection_dim=128,
    )


def _toy_tokenizer():
    from transformers import CLIPTokenizer

    from bench.toyworld.tokenizer import write_toy_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_toy_tokenizer(tmp), local_files_only=True)


def contrastive_loss(image_emb: torch.Tensor, caption_emb: torch.Tensor, labels: torch.Tensor,
                     logit_scale: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Image→caption cross-entropy over all 320 captions plus caption→image in-batch loss with
    every image of the same caption as a positive."""
    image_emb, caption_emb = F.normalize(image_emb, dim=-1), F.normalize(caption_emb, dim=-1)
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_emb @ caption_emb.T  # (B, 320)
    loss_i = F.cross_entropy(logits, labels)
    present = torch.unique(labels)
    positives = (labels[None, :] == present[:, None]).float()  # (P, B)
    logits_t = scale * caption_emb[present] @ image_emb.T
    loss_t = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(logits_t, dim=1)).sum(1).mean()
    acc = float((logits.argmax(1) == labels).float().mean())
    return (loss_i + loss_t) / 2, {"acc": acc}


def caption_labels(labels: np.ndarray) -> torch.Tensor:
    from bench.toyworld.generator import caption_index

    return torch.from_numpy(caption_index(labels[:, 0], labels[:, 1], labels[:, 2]).astype(np.int64))


def train_gen_clip(cfg: TrainConfig) -> dict:
    from transformers import CLIPModel

    pool = make_pool(cfg, POOL_GENERATOR)
    tokenizer = _toy_tokenizer()
    torch.manual_seed(cfg.seed)
    model = CLIPModel(gen_clip_config())
    # captions padded to their own max length: with causal attention the end-token features do
    # not depend on the padding after it, so this equals the 77-token padding used at inference
    caption_ids = tokenizer(all_captions(), padding=True, return_tensors="pt").input_ids
    batch = cfg.batch["clip"]

    def loss_fn(step, gen):
        idx = torch.randint(0, len(pool["images"]), (batch,), generator=gen).numpy()
        images = ev.clip_pixels(to_tensor(pool["images"][idx]))
        labels = caption_labels(pool["labels"][idx])
        image_emb = model.get_image_features(pixel_values=images).pooler_output
        text_emb = model.get_text_features(input_ids=caption_ids).pooler_output
        return contrastive_loss(image_emb, text_emb, labels, model.logit_scale)

    base = cfg.lr["clip"]
    info = train_loop(cfg, "clip", {"model": model}, model.parameters(), loss_fn,
                      lambda s: warmup_lr(base, s, total=cfg.steps["clip"]))
    model.eval()
    export_gen_clip(cfg, model)
    info["quality"] = quality_gen_clip(cfg, model, tokenizer)
    return info


def split_clip(model):
    """The text and vision towers of a trained transformers CLIPModel as CLIPTextModel / CLIPVisionModel
    (copied by state-dict keys: transformers 5 towers have no ``text_model`` attribute)."""
    from transformers import CLIPTextModel, CLIPVisionModel

    state = model.state_dict()
    parts = {}
    for cls, prefix, sub_cfg in ((CLIPTextModel, "text_model.", model.config.text_config),
                                 (CLIPVisionModel, "vision_model.", model.config.vision_config)):
        tower = cls(sub_cfg)
        own = tower.state_dict()
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(own) != set(picked):  # some versions keep the prefix inside the tower
            picked = {k: v for k, v in state.items() if k.startswith(prefix)}
        tower.load_state_dict(picked, strict=True)
        parts[prefix.rstrip("._")] = tower.eval()
    return parts["text_model"], parts["vision_model"]


def export_gen_clip(cfg: TrainConfig, model) -> None:
    from transformers import CLIPImageProcessor

    from bench.toyworld.tokenizer import write_toy_tokenizer

    final = export_dir(cfg, "clip")
    staging = staging_dir(final)
    text, vision = split_clip(model)
    text.save_pretrained(staging / "text_encoder", safe_serialization=True)
    vision.save_pretrained(staging / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                       image_mean=list(ev.OPENAI_MEAN), image_std=list(ev.OPENAI_STD)).save_pretrained(
        staging / "image_encoder")
    model.save_pretrained(staging / "clip_full", safe_serialization=True)  # for the quality report
    write_toy_tokenizer(staging / "tokenizer")
    finish_export(staging, final)


def gen_clip_classifier(model, tokenizer) -> ev.ClipAttributeClassifier:
    def encode_text(texts):
        ids = tokenizer(texts, padding=True, return_tensors="pt").input_ids
        return model.get_text_features(input_ids=ids).pooler_output

    return ev.ClipAttributeClassifier(lambda px: model.get_image_features(pixel_values=px).pooler_output,
                                      encode_text)


def quality_gen_clip(cfg: TrainConfig, model, tokenizer) -> dict:
    images, labels = heldout(cfg)
    return ev.attribute_accuracy(gen_clip_classifier(model.eval(), tokenizer).classify(images), labels)
