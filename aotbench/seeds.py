"""Deterministic seeds derived from a run seed and a purpose.

Every random draw in training and sampling comes from a generator seeded by ``derive(seed, purpose, index...)``, so
any pool, sigma draw or dropout mask can be recomputed from its coordinates alone. That is what makes a resumed
(or background-paired, or re-launched) run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib

import torch


def derive(*parts) -> int:
    """A 63-bit seed from any tuple of ints and strings (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(*parts, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive(*parts))
