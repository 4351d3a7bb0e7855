"""A CLIP BPE tokenizer with a tiny vocabulary built from the toy world's caption words.

Same format and algorithm as SD's tokenizer (byte-level BPE, ``</w>`` word ends, ``<|startoftext|>``
/ ``<|endoftext|>``, padding with the end token to 77), loaded with ``CLIPTokenizer.from_pretrained``.
The vocabulary is the 512 byte symbols (with and without ``</w>``) plus one merge chain per caption
word, so every caption word is one token and any other text still tokenizes (byte fallback). This
keeps the text encoder's embedding table at ~600 rows instead of 49,408.
"""

from __future__ import annotations

from pathlib import Path

from bench.tiny_random import bytes_to_unicode, write_bpe_tokenizer
from bench.toyworld.generator import BACKGROUND_NAMES, COLOUR_NAMES, SHAPES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77


def caption_words() -> list[str]:
    return ["a", "on", "background", *COLOUR_NAMES, *SHAPES, *BACKGROUND_NAMES]


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the lowest-ranked adjacent pair."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def build_vocab() -> tuple[list[str], list[tuple[str, str]]]:
    """(vocabulary in id order, merges in rank order)."""
    byte_chars = list(bytes_to_unicode().values())
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in caption_words():
        # add merges (lowest priority) until the word is a single token under all merges so far
        while True:
            symbols = _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)
            if len(symbols) == 1:
                break
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [BOS, EOS]
    if len(set(vocab)) != len(vocab):
        raise RuntimeError("toy tokenizer vocabulary has duplicate entries")
    return vocab, merges


def write_toy_tokenizer(directory: str | Path) -> Path:
    """Write vocab.json, merges.txt, tokenizer.json and configs (loadable by CLIPTokenizer)."""
    vocab, merges = build_vocab()
    return write_bpe_tokenizer(directory, vocab, merges, model_max_length=MODEL_MAX_LENGTH, pad_token=EOS)


def vocab_size() -> int:
    return len(build_vocab()[0])
