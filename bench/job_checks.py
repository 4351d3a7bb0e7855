"""Checks a job makes before it spends time: hyperparameter types, a writable results dir, prompt
lengths against the text encoder's window, and the integrity digest of cached inversions.

Each failure is one clear message naming the key, the value and what was expected
(docs/reliability.md, "What is refused"). What must be on disk (weights, data) is bench/preflight.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch

from bench.config import ConfigError, check_dotted_path
from bench.data.item import EditItem, ItemError
from methods.base import Inversion

log = logging.getLogger(__name__)


def _allowed_types(annotation: Any) -> tuple[type, ...] | None:
    """The plain types a field annotation admits (``int``, ``float | None``...); None = not checked."""
    if annotation in (int, float, bool, str):
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [_allowed_types(arg) if arg is not type(None) else (type(None),) for arg in typing.get_args(annotation)]
        return None if any(m is None for m in members) else tuple(t for m in members for t in m)
    return None


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int subclass: only a bool field takes it
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    return isinstance(value, allowed)


def check_hparam_types(config: dict[str, Any], what: str = "method") -> None:
    """Each value in a method config matches its dataclass field's type: an ``int`` field refuses 4.5
    (it would run 5 steps), a ``float`` field refuses "abc" (a raw TypeError later)."""
    import importlib

    target = check_dotted_path(config.get("_target_"), f"{what}._target_")
    module_name, _, class_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if cls is None or not dataclasses.is_dataclass(cls):
        return
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name not in config:
            continue
        allowed = _allowed_types(hints.get(field.name))
        value = config[field.name]
        if allowed and not _type_ok(value, allowed):
            expected = " or ".join("null" if t is type(None) else {int: "an integer", float: "a number",
                                                                   bool: "true/false", str: "a string"}[t]
                                   for t in allowed)
            raise ConfigError(f"{what}.{field.name}={value!r}: expected {expected} ({cls.__name__}.{field.name})")


def check_writable(results_dir: str | Path) -> None:
    """Fail in one line, before the model is loaded, when the results dir cannot take files."""
    path = Path(results_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"paths.results_dir={str(path)!r} is not writable ({err.strerror or err}); "
                          "choose another with paths.results_dir=... or EDITBENCH_RESULTS") from err


def _word_end(prompt: str, word: str) -> int | None:
    match = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, flags=re.IGNORECASE)
    return match.end() if match else None


def prompt_warnings(tokenizer, item: EditItem) -> list[str]:
    """Warnings for prompts longer than the text encoder's window (they are truncated); an ItemError
    when a blend word lies past the window (the edit would silently target nothing)."""
    limit = int(tokenizer.model_max_length)
    warnings = []
    words = item.blend_words or (None, None)
    for name, prompt, word in (("source_prompt", item.source_prompt, words[0]),
                               ("target_prompt", item.target_prompt, words[1])):
        length = len(tokenizer(prompt).input_ids)
        if length <= limit:
            continue
        end = _word_end(prompt, word) if word else None
        if end is not None and len(tokenizer(prompt[:end]).input_ids) > limit:
            raise ItemError(f"item {item.item_id!r}: blend word {word!r} lies past the text encoder's {limit}-token "
                            f"window of its {name} ({length} tokens); shorten the prompt")
        warnings.append(f"{name} has {length} tokens; the text encoder sees the first {limit} (truncated)")
    return warnings


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Digest of named tensors (name, dtype, shape, bytes): detects a damaged cached inversion."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_checked_inversion(path: Path) -> Inversion | None:
    """A cached inversion whose tensors match the digest recorded when it was computed; None (compute
    it again) when the file is absent, unreadable or damaged."""
    if not path.is_file():
        return None
    try:
        inversion = Inversion.load(str(path))
    except Exception as err:  # safetensors raises several types for a damaged header
        log.warning("cached inversion %s is unreadable (%s: %s); computing it again", path, type(err).__name__, err)
        return None
    expected = inversion.meta.get("tensors_sha256")
    if expected != tensors_sha256(inversion.tensors):
        log.warning("cached inversion %s does not match its recorded digest (%s); computing it again", path,
                    "none recorded" if expected is None else "damaged")
        return None
    return inversion
