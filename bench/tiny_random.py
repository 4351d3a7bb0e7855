"""A tiny, random-weight, SD-shaped pipeline for tests (``model=tiny_random``).

Built in code the way diffusers' own tests build theirs (seeded before each component), saved with
``save_pretrained`` and then loaded through the same ``from_pretrained`` path as real weights. The
tokenizer is the real CLIP BPE tokenizer, rebuilt offline from the vocabulary file that open_clip
ships (``bpe_simple_vocab_16e6.txt.gz``), so prompts tokenize exactly as with SD's tokenizer.

Shape: 64×64 images, VAE ×4 down-sampling → 4×16×16 latents, UNet with cross-attention at 16² and
8² (so attention-control methods have maps to work with), CLIP text encoder (hidden 32), and a
tiny CLIP vision tower as ``image_encoder`` (StyleDiffusion's image features).
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

import torch

TINY_VERSION = "v1"
CLIP_VOCAB_SIZE = 49408


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable-unicode table (every byte gets a visible character)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_clip_tokenizer(directory: str | Path) -> Path:
    """Write vocab.json, merges.txt and tokenizer configs of the real CLIP tokenizer (offline)."""
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # as CLIP's simple_tokenizer
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    return write_bpe_tokenizer(directory, vocab, merges, model_max_length=77)


def write_bpe_tokenizer(directory: str | Path, vocab: list[str], merges: list[tuple[str, str]],
                        **tokenizer_kwargs) -> Path:
    """Write a CLIP-style BPE tokenizer (vocab.json, merges.txt, tokenizer.json and configs) loadable with
    ``CLIPTokenizer.from_pretrained(directory)``; the slow files are kept for loaders that read them."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                          encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"),
                              **tokenizer_kwargs)
    tokenizer.save_pretrained(directory)
    return directory


def build_components(seed: int = 0) -> dict:
    """The tiny SD-shaped components with deterministic random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=16,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        scaling_factor=0.18215,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=32,
    ))
    torch.manual_seed(seed)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=4, projection_dim=32,
    ))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": clip_tokenizer(),
            "image_encoder": image_encoder}


def clip_tokenizer():
    """The real CLIP tokenizer (77 tokens), loaded from a temporary copy written offline."""
    from transformers import CLIPTokenizer

    directory = Path(tempfile.mkdtemp(prefix="clip-tokenizer-"))
    try:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(directory), local_files_only=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def save_pipeline(path: str | Path, parts: dict, image_encoder) -> Path:
    """Save unet / vae / text_encoder / tokenizer (``parts``) as a StableDiffusionPipeline folder at ``path``,
    with a DDIM scheduler config (SD's betas; the harness builds each method's own scheduler) and
    ``image_encoder`` in ``image_encoder/``; atomic at folder level (staged, then renamed)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    path = Path(path)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(**parts, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    staging = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent if path.parent.exists() else None))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        image_encoder.save_pretrained(staging / "image_encoder", safe_serialization=True)
        # keep vocab.json / merges.txt beside tokenizer.json for loaders that read the slow files
        write_clip_tokenizer(staging / "tokenizer")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def build_tiny_random(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it (diffusers format) at ``path``."""
    parts = build_components(seed)
    image_encoder = parts.pop("image_encoder")
    return save_pipeline(path, parts, image_encoder)
