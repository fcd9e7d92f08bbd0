"""Explain one shard on a worker, and merge the shards' part files into ``explanations.parquet``.

A worker reads its shard's rows (tasks/plan/shards.py), explains them, and writes its explanation rows (and
the report columns of its decisions) as part files into the run's staging folder; only a
:class:`ShardResult` (counts, ids, paths) goes back to the flow.

A worker process keeps the loaded model, the fitted reference statistics and the explainer between
shards (keyed by the config, model and reference checksums and the device), so only the first shard
on each worker pays for loading them.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import LimelightError, one_line
from tasks.explain.aggregate import explanation_schema, explanation_table
from tasks.inputs.config import Config
from tasks.io import atomic_path, release_unused_memory
from tasks.plan.shards import Shard, read_shard
from tasks.run.info import RunInfo

if TYPE_CHECKING:
    import pandas as pd

#: Worker environment variable set by flows/cluster.py: "cpu" or "cuda" (the one visible device).
DEVICE_ENV = "LIMELIGHT_DEVICE"
T = TypeVar("T")


# --- the explanations table ----------------------------------------------------------------------

def conform(frame: pd.DataFrame, id_column: str) -> pa.Table:
    """The engine's table in the contract's column order and types (fails loudly on a missing column)."""
    schema = explanation_schema(id_column)
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"explanation table lacks columns {missing}")
    table = pa.Table.from_pandas(frame[schema.names], preserve_index=False)
    return table.cast(schema)


#: A decision that could not be explained or reported: (id, stage, one-line error).
Failure = tuple[str, str, str]


@dataclass(frozen=True)
class ShardResult:
    """What a worker sends back: counts, ids and where the part files are (never the rows themselves).

    ``ids`` are the decisions explained, in order (the part files hold exactly these); ``failures``
    the shard's decisions that could not be explained, with their error.
    """

    index: int
    decisions: int
    rows: int
    part: str
    applicants: str
    review_ids: tuple[str, ...]
    seconds: float
    device: str
    worker: str
    name: str = ""
    path: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()
    failures: tuple[Failure, ...] = ()

    @property
    def order(self) -> tuple[int, tuple[int, ...]]:
        return self.index, self.path

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardResult:
        tuples = {"review_ids", "path", "ids"}
        values = {k: tuple(v) if k in tuples else v for k, v in data.items()}
        values["failures"] = tuple(tuple(f) for f in data.get("failures", ()))
        return cls(**values)


def part_paths(staging: Path, shard: Shard) -> tuple[Path, Path]:
    parts = Path(staging) / "parts"
    return parts / f"{shard.name}.explanations.parquet", parts / f"{shard.name}.applicants.parquet"


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as temp:
        pq.write_table(table, temp)


# --- on the worker -------------------------------------------------------------------------------


@dataclass
class _Loaded:
    model: Any
    stats: Any
    explainer: Any


_CACHE: OrderedDict[tuple[str, ...], _Loaded] = OrderedDict()
#: Rows per row group of the merged explanations (about 4 MB in memory at 250 bytes a row).
MERGED_ROW_GROUP_ROWS = 16_384
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2  # a long-lived worker of a shared cluster may see a second config; keep memory bounded


def worker_device() -> str:
    """The torch device of this worker process: what flows/cluster.py set, else what is visible.

    Our own clusters give each worker exactly one CUDA device (``CUDA_VISIBLE_DEVICES``), so it is
    always ``cuda:0`` there.
    """
    kind = os.environ.get(DEVICE_ENV, "").strip().lower()
    if kind == "cpu":
        return "cpu"
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise LimelightError(
                f"worker for CUDA device {visible!r}: torch {torch.__version__} cannot use it (a CPU-only build, "
                "or no driver); install a CUDA build of torch or run with --devices cpu:N"
            )
        return "cuda:0"
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _resources(config: Config, run: RunInfo, device: str) -> _Loaded:
    """Model, reference statistics and explainer of this worker process, loaded once per key."""
    from tasks.engine import fit_reference, make_explainer
    from tasks.inputs.data import read_reference
    from tasks.inputs.model import check_missing_contract, load_model

    key = (run.config_sha256, run.model_sha256, run.reference_sha256, device)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        model = load_model(config.model, len(config.features), device=device, sha256=run.model_sha256,
                           features=config.features, config_source=config.source)
        stats = fit_reference(read_reference(config), config.features, config.explain.kernel_width)
        check_missing_contract(model, *stats.missing_probe())
        model = CheckedModel(model)
        loaded = _Loaded(model, stats, make_explainer(config, stats, model))
        _CACHE[key] = loaded
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return loaded


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _set_threads(torch_threads: int) -> None:
    """Dask's nanny sets OMP/MKL threads to 1 in workers; torch's thread count is set on purpose here."""
    import torch

    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


def bisect_failures(explain: Callable[[np.ndarray], T], rows: np.ndarray) -> tuple[list[tuple[np.ndarray, T]],
                                                                                   list[tuple[int, str]]]:
    """Run ``explain`` on ``rows``; where it raises, split the rows in halves down to the failing ones.

    Returns the parts that succeeded (their rows, in order, and the result) and the rows that fail
    alone, with their error. Costs at most about 2 f log2(n) extra calls for f failing rows.
    """
    done: list[tuple[np.ndarray, T]] = []
    failed: list[tuple[int, str]] = []
    pending = [rows]
    while pending:
        part = pending.pop(0)
        try:
            done.append((part, explain(part)))
        except Exception as error:  # the model's or the engine's: narrowed down, then recorded
            if len(part) == 1:
                failed.append((int(part[0]), one_line(error)))
            else:
                half = len(part) // 2
                pending[:0] = [part[:half], part[half:]]
    return done, failed


class CheckedModel:
    """The loaded model, refusing outputs that are not probabilities (so the decision fails, not the run).

    Non-finite values, and for ``output = "probabilities"`` rows outside [0, 1] or not summing to 1,
    raise :class:`ModelError`; :func:`bisect_failures` then finds the decisions that cause them.
    """

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, x: Any) -> Any:
        import torch

        from tasks.errors import ModelError
        from tasks.inputs.model import is_probabilities

        out = self._model(x)
        if out.dim() == 2 and len(out):
            if not bool(torch.isfinite(out).all()):
                raise ModelError(f"{self._model.description}: non-finite output")
            if self._model.output == "probabilities" and not is_probabilities(out):
                raise ModelError(f"{self._model.description}: output rows are not probabilities "
                                 "(outside [0, 1] or not summing to 1)")
        return out


def prepare_worker(config: Config, run: RunInfo) -> str:
    """Load this worker's model, reference statistics and explainer (kept for its shards).

    Run once before any shard, so a model that is missing, corrupt or breaks the contract (checked on
    load: input width, output shape, probabilities) stops the run before any work.
    """
    device = worker_device()
    _set_threads(config.run.torch_threads)
    loaded = _resources(config, run, device)
    return f"{loaded.model.description} on {_describe(device)}"


def explain_shard(config: Config, shard: Shard, run: RunInfo, staging: str | Path) -> ShardResult:
    """Read a shard, explain it, write its explanation rows and report columns as part files.

    A decision the model or the engine fails on (an exception, non-finite or non-probability
    outputs) is found by bisection and returned as a failure; the others are explained as usual.
    """
    started = time.perf_counter()
    device = worker_device()
    _set_threads(config.run.torch_threads)
    rows = read_shard(config, shard)
    loaded = _resources(config, run, device)

    def explain(take: np.ndarray) -> pa.Table:
        x = rows.x[take]
        explanations = loaded.explainer.explain(x, [rows.ids[i] for i in take])
        return conform(explanation_table(explanations, x, loaded.stats, config), config.data.id_column)

    done, failed = bisect_failures(explain, np.arange(len(rows.ids), dtype=np.int64))
    schema = explanation_schema(config.data.id_column)
    table = pa.concat_tables([t for _, t in done]) if done else schema.empty_table()
    kept = np.concatenate([r for r, _ in done]) if done else np.zeros(0, np.int64)
    part, applicants = part_paths(Path(staging), shard)
    write_table(table, part)
    write_table(rows.applicants.take(pa.array(kept, pa.int64())), applicants)
    review_mask = table.column("needs_review").to_numpy(zero_copy_only=False)
    review = table.column(config.data.id_column).to_numpy(zero_copy_only=False)[review_mask]
    return ShardResult(
        index=shard.index,
        decisions=len(kept),
        rows=table.num_rows,
        part=str(part),
        applicants=str(applicants),
        review_ids=tuple(dict.fromkeys(str(v) for v in review)),
        seconds=time.perf_counter() - started,
        device=_describe(device),
        worker=f"{os.uname().nodename}:{os.getpid()}",
        name=shard.name,
        path=shard.path,
        ids=tuple(rows.ids[i] for i in kept),
        failures=tuple((rows.ids[row], "explain", error) for row, error in sorted(failed)),
    )


def _describe(device: str) -> str:
    if device.startswith("cuda"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"cuda (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else device
    return device


def _newer_columns_as_null(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part written by an older limelight (a run resumed across versions) lacks the columns added since, e.g.
    ``tied``: they are null there ("not computed"), as the contract says of quality columns an engine lacks."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names)


def merge_parts(results: Sequence[ShardResult], target: Path, id_column: str,
                metadata: dict[bytes, bytes] | None = None, exclude: set[str] | None = None) -> int:
    """Write the shards' part files, in shard order, as one Parquet file (atomically); returns rows.

    Streams the parts in row groups of about :data:`MERGED_ROW_GROUP_ROWS` rows, so memory holds one row group
    at a time, and hands what Arrow freed back after each. A row group per part made the writer's metadata, held
    until it closes, grow with the number of shards: the merge's peak grew by 28 MB from 400 to 1,000 parts, and
    by 6 MB with these row groups. Rows of the ``exclude``d ids (decisions whose report failed or was not reached)
    are left out.
    """
    schema = explanation_schema(id_column)
    if metadata:
        schema = schema.with_metadata(metadata)
    total = 0
    excluded = pa.array(sorted(exclude), pa.string()) if exclude else None
    pending: list[pa.Table] = []
    with atomic_path(target) as temp, pq.ParquetWriter(temp, schema) as writer:

        def flush() -> None:
            if pending:
                group = pa.concat_tables(pending)
                writer.write_table(group, row_group_size=max(group.num_rows, 1))
                pending.clear()
                del group
                release_unused_memory()

        for result in sorted(results, key=lambda r: r.order):
            table = _newer_columns_as_null(pq.read_table(result.part), schema).cast(schema)
            if excluded is not None:  # results the flow holds carry no ids (tasks/run/ledger.py): filter each part
                table = table.filter(pc.invert(pc.is_in(table.column(id_column), value_set=excluded)))
            pending.append(table)
            total += table.num_rows
            if sum(t.num_rows for t in pending) >= MERGED_ROW_GROUP_ROWS:
                flush()
        flush()
    return total

