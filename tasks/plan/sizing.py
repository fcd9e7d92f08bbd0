"""Shard and render-batch sizes that keep a run's number of Prefect task runs bounded, however many decisions.

Every shard is one ``explain-shard`` task run and every render batch one ``render-reports`` task run; each
costs the Prefect server a few rows and events and the flow process a future to watch. With the configured
sizes alone a million decisions would make 3,907 shards of 256 and 31,250 render batches of 32. So both sizes
grow with the number of decisions: a shard holds at least ``[run] shard_size`` decisions and at least
``decisions / MAX_SHARDS``; a render batch at least ``RENDER_BATCH`` reports and at least
``decisions / MAX_RENDER_BATCHES``. A run then has at most ``MAX_SHARDS`` shards and at most
``MAX_SHARDS + MAX_RENDER_BATCHES`` render batches (each shard's last batch may be short), plus the few
task runs of the flow itself (:data:`FLOW_TASK_RUNS`): at most about 4,000 task runs in all, before retries.

Small runs keep the configured sizes (the demo's 400 decisions: 8 shards of 50, 16 render batches of up to
32); sizes grow from 256,000 decisions (shards) and 64,000 decisions (render batches) on. Bigger shards
cost a worker more memory per task (the engine works through a shard in chunks within ``[explain]
memory_budget_mb``) and lose more work at a deadline; bigger render batches are still spread over every
render worker (2,000 batches for 16 or 64 render workers). The sizes are a pure function of the number of
planned decisions and the config, so a resumed run finds the same shards and batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

#: Reports per render task for small runs: small enough to spread a shard's reports over every worker.
RENDER_BATCH = 32
#: At most this many shards (explain task runs) per run.
MAX_SHARDS = 1000
#: Render batches grow beyond RENDER_BATCH so that a run has at most about this many more than its shards.
MAX_RENDER_BATCHES = 2000
#: Task runs of a run besides shards and render batches: load-config, validate-inputs, plan-shards,
#: checksums, prepare-worker, merge-explanations, explanation-quality, render-summary.
FLOW_TASK_RUNS = 8


@dataclass(frozen=True)
class RunSizes:
    """The sizes a run uses for ``decisions`` planned decisions."""

    decisions: int
    shard_size: int
    render_batch: int

    @property
    def shards(self) -> int:
        return ceil(self.decisions / self.shard_size) if self.decisions else 0

    @property
    def render_batches(self) -> int:
        """Render batches when every shard is full but the last (batches do not span shards)."""
        if not self.decisions:
            return 0
        full, rest = divmod(self.decisions, self.shard_size)
        return full * ceil(self.shard_size / self.render_batch) + ceil(rest / self.render_batch)

    @property
    def task_runs(self) -> int:
        """Task runs of the run, before retries and the splitting of shards whose worker died."""
        return self.shards + self.render_batches + FLOW_TASK_RUNS


def run_sizes(decisions: int, shard_size: int, render_batch: int = RENDER_BATCH, *,
              max_shards: int = MAX_SHARDS, max_render_batches: int = MAX_RENDER_BATCHES) -> RunSizes:
    """Shard and render-batch sizes for ``decisions``: the configured ones, grown to keep the counts bounded."""
    if decisions < 0 or shard_size < 1 or render_batch < 1 or max_shards < 1 or max_render_batches < 1:
        raise ValueError("run_sizes: decisions >= 0 and positive sizes and bounds")
    shard = max(shard_size, ceil(decisions / max_shards))
    batch = max(render_batch, ceil(decisions / max_render_batches))
    return RunSizes(decisions, shard, min(batch, shard))


#: Bytes a run writes per report, with a margin: a German-credit letter (d = 20, English) is about 45 KB; longer
#: annexes and CJK font subsets weigh more.
REPORT_BYTES = {"en": 128 * 1024, "zh-CN": 512 * 1024}
#: Bytes per decision besides its report: its explanation rows (about 0.8 KB), staged once as a shard part and
#: once merged, and its index and failure rows.
EXPLANATION_BYTES = 4 * 1024
#: The summary PDF, the manifest and the staging records, with a margin.
FIXED_BYTES = 32 * 1024 * 1024


def estimate_output_bytes(decisions: int, *, render: bool, language: str = "en") -> int:
    """Disk a run of ``decisions`` needs under ``--out`` at its peak (the staged outputs are renamed into place,
    not copied): an upper estimate, for the run's preflight."""
    per_report = REPORT_BYTES.get(language, max(REPORT_BYTES.values())) if render else 0
    return FIXED_BYTES + decisions * (EXPLANATION_BYTES + per_report)
