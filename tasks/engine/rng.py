"""Counter-based random numbers: each decision's stream depends only on (run seed, decision id).

A decision's uniforms are SplitMix64 outputs of ``key + counter * gamma``, where ``key`` is the first 8 bytes
of BLAKE2b(seed, id) and ``counter`` is the position inside that decision's own draw. Nothing depends on
which other decisions share the batch, on the batch's order, on the worker or on the device: the integer
arithmetic is exact and identical on CPU and CUDA, so a decision gets the same perturbations everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

_GAMMA = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_MASK24 = (1 << 24) - 1


def decision_key(seed: int, decision_id: str) -> int:
    """The 64-bit stream key of one decision (a signed int64 value)."""
    digest = hashlib.blake2b(f"{seed}\x1f{decision_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def decision_keys(seed: int, ids: Sequence[str]) -> np.ndarray:
    """Stream keys for a batch of decisions, int64 [B]."""
    return np.fromiter((decision_key(seed, i) for i in ids), dtype=np.int64, count=len(ids))


def _logical_shift_xor(z: torch.Tensor, shift: int, scratch: torch.Tensor) -> None:
    """z ^= z >>> shift (logical shift on int64, in place; ``scratch`` is a buffer of z's shape)."""
    torch.bitwise_right_shift(z, shift, out=scratch).bitwise_and_((1 << (64 - shift)) - 1)
    z.bitwise_xor_(scratch)


def stream_offsets(num_samples: int, num_features: int, stream: int, device: torch.device) -> torch.Tensor:
    """``counter * gamma`` (mod 2**64) for every (sample pair, feature): int64 [ceil(S / 2), d]."""
    half = (num_samples + 1) // 2
    counters = torch.arange(num_features, dtype=torch.int64, device=device).mul_(half).view(1, num_features)
    counters = counters + torch.arange(1, half + 1, dtype=torch.int64, device=device).view(half, 1)
    return counters.add_(stream * (1 << 40)).mul_(_GAMMA)


UNIFORM_BITS = 24
"""Resolution of the uniforms: ``u = bits / 2**24``."""


def uniform_bits(keys: torch.Tensor, offsets: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Random integers in [0, 2**24), int64 [B, num_samples, d]; ``u = bits / 2**24``.

    ``offsets`` is :func:`stream_offsets` for (num_samples, d, stream). Element (b, i, j) is half ``i % 2``
    (24 high or 24 low bits) of the SplitMix64 output for key ``keys[b]`` at counter ``j * ceil(S / 2) + i // 2
    + 1`` of the stream: a definition that does not depend on the layout, the batch or the device.
    """
    z = keys.to(torch.int64).view(-1, 1, 1) + offsets.unsqueeze(0)  # [B, H, d]
    scratch = torch.empty_like(z)
    _logical_shift_xor(z, 30, scratch)
    z.mul_(_MIX1)
    _logical_shift_xor(z, 27, scratch)
    z.mul_(_MIX2)
    _logical_shift_xor(z, 31, scratch)
    high = torch.bitwise_right_shift(z, 64 - UNIFORM_BITS).bitwise_and_(_MASK24)
    low = z.bitwise_right_shift_(32 - UNIFORM_BITS).bitwise_and_(_MASK24)
    bits = torch.stack((high, low), dim=2)  # [B, H, 2, d]
    return bits.view(z.shape[0], -1, z.shape[2])[:, :num_samples]


def uniforms(keys: torch.Tensor, num_samples: int, num_features: int, stream: int = 0) -> torch.Tensor:
    """float32 uniforms in [0, 1), [B, num_samples, num_features]: ``uniform_bits / 2**24``."""
    offsets = stream_offsets(num_samples, num_features, stream, keys.device)
    return uniform_bits(keys, offsets, num_samples).to(torch.float32).mul_(2.0**-UNIFORM_BITS)
