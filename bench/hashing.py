"""Content-hash keys: sha256 of canonical JSON of everything that changes an output, nothing else.

Canonical JSON = sorted keys, no whitespace, floats as repr (so 0.1 and 0.10000000000000001 agree),
tuples as lists. Paths, device names and loggers never enter a key (see ``bench.runner``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_LENGTH = 20  # hex characters (80 bits): collisions are not a practical concern at benchmark scale


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot hash value of type {type(obj).__name__}: {obj!r}")


def content_key(obj: Any, length: int = KEY_LENGTH) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from the job seed and an identity (e.g. the image sha): stable across runs and
    machines, independent of item order, so a shard or a resumed run draws the same noise."""
    return int(content_key([seed, *parts], 16), 16) & ((1 << 63) - 1)
