"""The run's accounting, kept as the run goes: every selected decision ends reported, failed or not reached.

The flow process used to keep every decision id it had seen until the end of the run (each shard's result held
its ids; the final check built sets of all of them), which grew its memory by tens of MB per million decisions
(docs/performance.md, "Memory at scale"). :class:`Ledger` checks each piece of work when it ends instead, against
the ids that piece was planned to hold, and keeps only counts and the shards' ranges:

- a shard explained: its explained and failed ids are exactly its planned ids (:meth:`Ledger.explained`);
- a render batch: its reported and failed ids are exactly the batch's explained ids (:meth:`Ledger.rendered`);
- at the end (:meth:`Ledger.close`): the shards accounted for (explained, failed on a worker, or not reached)
  tile the planned selection once, every explained decision was rendered or not reached (with reports), and
  ``decisions_in = reported + failed + not_reached``.

The input check has already refused a decisions file that repeats an id, and the planned positions are distinct,
so per-piece checks and the tiling together say what the whole-run set comparison said.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

#: Problems kept word for word (the count of all of them is kept too): the manifest stays O(1) in N.
KEPT_PROBLEMS = 5


class Ledger:
    """Counts of how the selected decisions ended, checked piece by piece (see the module's docstring)."""

    def __init__(self, decisions_in: int, input_failed: int, planned: int) -> None:
        self.decisions_in = decisions_in
        self.planned = planned  # decisions that went to the workers (decisions_in - input_failed)
        self.reported = 0
        self.failed = input_failed
        self.not_reached = 0
        self.awaiting_render = 0  # explained, neither rendered nor failed nor counted not reached yet
        self.ranges: list[tuple[int, int]] = []  # (first, size) of each shard accounted for: O(shards)
        self.problems: list[str] = []
        self.problem_count = 0
        if input_failed + planned != decisions_in:
            self.problem(f"{decisions_in} selected, {input_failed} failed at input, {planned} planned")

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < KEPT_PROBLEMS:
            self.problems.append(text)

    def _same(self, what: str, expected: Sequence[str], got: Sequence[str]) -> None:
        """``got`` holds exactly ``expected`` (as multisets: a repeat is a problem too)."""
        if len(expected) == len(got) and (list(expected) == list(got) or Counter(expected) == Counter(got)):
            return
        missing = len(Counter(expected) - Counter(got))
        unknown = len(Counter(got) - Counter(expected))
        self.problem(f"{what}: {len(got)} ids for {len(expected)} planned ({missing} missing, {unknown} unknown "
                     "or repeated)")

    def explained(self, name: str, first: int, planned_ids: Sequence[str], explained_ids: Sequence[str],
                  failed_ids: Sequence[str], render: bool) -> None:
        """A shard came back: ``planned_ids`` (its slice of the selection) explained or failed, each once."""
        self.ranges.append((first, len(planned_ids)))
        self._same(name, planned_ids, [*explained_ids, *failed_ids])
        self.failed += len(failed_ids)
        if render:
            self.awaiting_render += len(explained_ids)
        else:
            self.reported += len(explained_ids)

    def worker_failed(self, first: int) -> None:
        """A one-decision shard whose task killed its workers: that decision failed."""
        self.ranges.append((first, 1))
        self.failed += 1

    def unexplained(self, first: int, size: int) -> None:
        """A shard the deadline left unexplained: its decisions were not reached."""
        self.ranges.append((first, size))
        self.not_reached += size

    def rendered(self, name: str, batch_ids: Sequence[str], reported_ids: Sequence[str],
                 failed_ids: Sequence[str]) -> None:
        """A render batch ended: its explained decisions (``batch_ids``) reported or failed, each once."""
        self._same(name, batch_ids, [*reported_ids, *failed_ids])
        self.awaiting_render -= len(batch_ids)
        self.reported += len(reported_ids)
        self.failed += len(failed_ids)

    def unrendered(self, count: int) -> None:
        """Explained decisions whose reports the deadline left unrendered: not reached."""
        self.awaiting_render -= count
        self.not_reached += count

    def close(self) -> dict[str, Any]:
        """The accounting (the manifest's ``accounting``): counts, ``holds`` and, when it does not, ``problem``
        (one line: the first problems and how many there were)."""
        position = 0
        for first, size in sorted(self.ranges):
            if first != position:
                self.problem(f"decisions {min(first, position)}-{max(first, position) - 1} of the selection "
                             f"{'counted twice' if first < position else 'unaccounted for'}")
            position = max(position, first + size)
        if position != self.planned:
            self.problem(f"{self.planned - position} planned decision(s) unaccounted for at the end")
        if self.awaiting_render:
            self.problem(f"{self.awaiting_render} explained decision(s) neither rendered, failed nor not reached")
        ends = self.reported + self.failed + self.not_reached
        if ends != self.decisions_in:
            self.problem(f"in ({self.decisions_in}) != reported + failed + not_reached ({ends})")
        problem = None
        if self.problem_count:
            more = self.problem_count - len(self.problems)
            problem = "; ".join(self.problems) + (f"; and {more} more" if more else "")
        return {"decisions_in": self.decisions_in, "reported": self.reported, "failed": self.failed,
                "not_reached": self.not_reached, "holds": problem is None, "problem": problem}
