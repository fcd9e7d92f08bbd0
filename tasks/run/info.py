"""Facts about one run that every output (PDF, manifest, artifacts) repeats identically."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """Fixed for a run, so re-rendering the same run gives byte-identical outputs.

    ``generated_at`` is the run's start time (UTC, ISO 8601, seconds), never "now" at render time.
    """

    run_id: str
    generated_at: str
    config_sha256: str
    model_sha256: str
    decisions_sha256: str
    reference_sha256: str
    engine: str  # "batched" or "lime"
    num_samples: int
    top_k: int
    kernel_width: float
    feature_selection: str
    seed: int
    explained_class: str
    min_fidelity: float
    versions: dict[str, str] = field(default_factory=dict)
    method: str = "lime"  # "per-bin", "kernel-matched" or "lime" (runs recorded before the method existed: lime's)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        return cls(**data)
