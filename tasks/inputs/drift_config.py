"""The `[drift]` section of the config: when a run's comparison with the previous night raises a warning.

The comparison itself is tasks/run/drift.py; docs/drift.md explains the figures. A shift beyond these thresholds
is a warning (log, Prefect artifact, the summary's drift page), never a failure.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DriftConfig(BaseModel):
    """Thresholds of the night-over-night comparison (population stability index, review share, decline rate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="compare each run with its baseline (the previous published "
                          "run of the same config under the output root, or --baseline)")
    psi_watch: float = Field(default=0.1, gt=0.0, description="a population stability index at or above this: "
                             "'watch' on the drift page (no warning); common practice: 0.1")
    psi_act: float = Field(default=0.25, gt=0.0, description="a population stability index at or above this (a "
                           "feature's share of the declines naming it, or the fidelity distribution): a warning; "
                           "common practice: 0.25")
    review_share_ratio: float = Field(default=2.0, gt=1.0, description="a review share at least this many times "
                                      "the baseline's (and review_share_min_change higher): a warning")
    review_share_min_change: float = Field(default=0.02, ge=0.0, le=1.0, description="the least rise of the review "
                                           "share (as a fraction of the decisions) that can raise a warning")
    decline_rate_change: float = Field(default=0.05, gt=0.0, le=1.0, description="a decline rate that moved by at "
                                       "least this (as a fraction of the decisions, up or down): a warning")
    min_decisions: int = Field(default=100, ge=1, description="fewer decisions in either run (fewer declines, for "
                               "the reason mix): the figures are shown but raise no warning (too few to judge)")
    epsilon: float = Field(default=0.0001, gt=0.0, lt=0.01, description="the share an empty cell counts as in a "
                           "population stability index (so it stays finite)")

    @model_validator(mode="after")
    def _ordered(self) -> DriftConfig:
        if self.psi_act < self.psi_watch:
            raise ValueError(f"psi_act ({self.psi_act}) is below psi_watch ({self.psi_watch})")
        return self
