"""Deadline runs: parse ``--deadline`` and estimate, from a calibration batch, whether a run meets it.

Plain arithmetic, no clock and no Prefect: the flow measures, these functions decide. The estimate
assumes the throughput seen so far holds for the rest of the run, that it scales with the number of
workers, and that the explanation time scales with the LIME samples per decision (rendering does
not, so the samples figure is optimistic when reports dominate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from tasks.errors import InputError, LimelightError

#: Seconds kept free before the deadline for merging, the summary and publishing.
PUBLISH_MARGIN_S = 10.0


def parse_deadline(text: str, now: datetime) -> datetime:
    """``2026-11-23T09:00+01:00`` -> an aware datetime; it must name its time zone and lie in the future."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"--deadline {text!r}: not an ISO 8601 time (e.g. 2026-11-23T09:00+01:00)") from None
    if moment.tzinfo is None:
        raise InputError(f"--deadline {text!r}: give the time zone (e.g. 2026-11-23T09:00+01:00 or ...Z)")
    if moment <= now:
        raise InputError(f"--deadline {text!r}: already passed (now {now.astimezone(UTC).isoformat()})")
    return moment


class DeadlineMissed(LimelightError):
    """The calibration batch shows the run would miss its deadline (and ``--best-effort`` was not given)."""


@dataclass(frozen=True)
class Estimate:
    """When a run would finish at the throughput measured so far, and what would meet the deadline."""

    total: int
    done: int
    rate: float  # decisions per second, all workers together
    finish: datetime
    deadline: datetime
    available_s: float  # seconds left for the remaining work (deadline minus margin minus now)
    needed_s: float  # seconds the remaining work needs at ``rate``
    workers: int
    num_samples: int

    @property
    def meets(self) -> bool:
        return self.needed_s <= self.available_s

    @property
    def workers_needed(self) -> int | None:
        """Workers that would finish in time (None: no time left at all)."""
        if self.available_s <= 0:
            return None
        return max(self.workers, math.ceil(self.workers * self.needed_s / self.available_s))

    @property
    def samples_that_fit(self) -> int:
        """LIME samples per decision that would fit, if time scales with samples."""
        if self.needed_s <= 0:
            return self.num_samples
        return max(0, math.floor(self.num_samples * max(self.available_s, 0.0) / self.needed_s))

    @property
    def decisions_that_fit(self) -> int:
        """Decisions (done ones included) finished by the deadline at the current rate."""
        return min(self.total, self.done + math.floor(self.rate * max(self.available_s, 0.0)))

    def describe(self) -> str:
        """One line: the estimate, and when it misses, what would meet the deadline."""
        finish = self.finish.astimezone(self.deadline.tzinfo).isoformat(timespec="seconds")
        deadline = self.deadline.isoformat(timespec="seconds")
        head = (f"estimated finish {finish} for {self.total} decisions at {self.rate:.1f} decisions/s on "
                f"{self.workers} worker{'s' if self.workers != 1 else ''} (deadline {deadline})")
        if self.meets:
            return head + ": meets the deadline"
        options = []
        if self.workers_needed is not None:
            options.append(f"{self.workers_needed} workers")
        if self.samples_that_fit > 0:
            options.append(f"num_samples <= {self.samples_that_fit}")
        options.append(f"{self.decisions_that_fit} decisions (--limit, most urgent first in --ids)")
        return head + ": misses it; to meet it use " + ", or ".join(options)


def estimate(
    *,
    total: int,
    done: int,
    elapsed_s: float,
    workers: int,
    num_samples: int,
    now: datetime,
    deadline: datetime,
    margin_s: float = PUBLISH_MARGIN_S,
) -> Estimate:
    """Estimate the finish from ``done`` of ``total`` decisions finished in ``elapsed_s`` seconds."""
    if done < 1 or elapsed_s <= 0:
        raise ValueError("an estimate needs at least one finished decision and a positive elapsed time")
    rate = done / elapsed_s
    needed = (total - done) / rate
    available = (deadline - now).total_seconds() - margin_s
    finish = datetime.fromtimestamp(now.timestamp() + needed + margin_s, tz=UTC)
    return Estimate(total=total, done=done, rate=rate, finish=finish, deadline=deadline, available_s=available,
                    needed_s=needed, workers=workers, num_samples=num_samples)
