"""Shards: plan them (file slices of ``[run] shard_size`` decisions) and explain one on a worker.

A shard is a list of pieces, each a row range ``[start, stop)`` of one Parquet file, in the order the
decisions are explained. Without ``--ids`` the pieces are contiguous slices of the files in order;
with ``--ids`` consecutive rows of one file collapse into one piece. Only paths and row numbers
travel to the workers: each worker reads its own slice, and writes its explanation rows (and the
report columns of its decisions) as part files into a staging folder.

A worker process keeps the loaded model, the fitted reference statistics and the explainer between
shards (keyed by the config, model and reference checksums and the device), so only the first shard
on each worker pays for loading them.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.config import Config
from tasks.data import DecisionRows, DecisionsIndex, SourceFile, concat_rows, read_rows, read_rows_at
from tasks.errors import LimelightError
from tasks.io import atomic_path
from tasks.runinfo import RunInfo

if TYPE_CHECKING:
    import pandas as pd

#: Worker environment variable set by flows/cluster.py: "cpu" or "cuda" (the one visible device).
DEVICE_ENV = "LIMELIGHT_DEVICE"


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one Parquet file."""

    source: SourceFile
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Shard:
    index: int
    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(index: DecisionsIndex, shard_size: int, positions: np.ndarray | None = None) -> list[Shard]:
    """Cut the decisions into shards of ``shard_size``.

    ``positions`` (global row numbers, in the order to explain) selects rows; None means every
    row in file order, planned from the row counts alone.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be positive")
    if positions is None:
        return _plan_all(index.files, shard_size)
    shards = []
    for number, first in enumerate(range(0, len(positions), shard_size)):
        chunk = positions[first : first + shard_size]
        shards.append(Shard(number, tuple(_pieces(index, chunk))))
    return shards


def _plan_all(files: Sequence[SourceFile], shard_size: int) -> list[Shard]:
    shards: list[Shard] = []
    pieces: list[Piece] = []
    room = shard_size
    for source in files:
        start = 0
        while start < source.num_rows:
            take = min(room, source.num_rows - start)
            pieces.append(Piece(source, start, start + take))
            start += take
            room -= take
            if room == 0:
                shards.append(Shard(len(shards), tuple(pieces)))
                pieces, room = [], shard_size
    if pieces:
        shards.append(Shard(len(shards), tuple(pieces)))
    return shards


def _pieces(index: DecisionsIndex, positions: np.ndarray) -> Iterator[Piece]:
    """Runs of consecutive rows of one file -> pieces, keeping the order of ``positions``."""
    file_of = np.searchsorted(index.offsets, positions, side="right") - 1
    local = positions - index.offsets[file_of]
    run_start = 0
    for i in range(1, len(positions) + 1):
        if i == len(positions) or file_of[i] != file_of[i - 1] or local[i] != local[i - 1] + 1:
            source = index.files[int(file_of[run_start])]
            yield Piece(source, int(local[run_start]), int(local[i - 1]) + 1)
            run_start = i


def read_shard(config: Config, shard: Shard) -> DecisionRows:
    """The shard's decisions in order; each file is read once (only the row groups it needs)."""
    d = len(config.features)
    if len(shard.pieces) == 1:
        piece = shard.pieces[0]
        return read_rows(config, piece.source, piece.start, piece.stop)
    by_file: OrderedDict[str, list[Piece]] = OrderedDict()
    for piece in shard.pieces:
        by_file.setdefault(piece.source.path, []).append(piece)
    blocks, block_start, cursor = [], {}, 0
    for path, pieces in by_file.items():
        rows = np.concatenate([np.arange(p.start, p.stop, dtype=np.int64) for p in pieces])
        block = read_rows_at(config, pieces[0].source, rows)
        blocks.append(block)
        block_start[path] = cursor
        cursor += len(rows)
    joined = concat_rows(blocks, config.data.id_column, d)
    order, used = [], dict.fromkeys(by_file, 0)
    for piece in shard.pieces:
        begin = block_start[piece.source.path] + used[piece.source.path]
        order.append(np.arange(begin, begin + piece.size, dtype=np.int64))
        used[piece.source.path] += piece.size
    take = np.concatenate(order)
    return DecisionRows(
        ids=[joined.ids[i] for i in take], x=joined.x[take], applicants=joined.applicants.take(pa.array(take))
    )


# --- the explanations table ----------------------------------------------------------------------

def explanation_schema(id_column: str) -> pa.Schema:
    """The public schema of explanations.parquet (docs/CONTRACTS.md); tasks/aggregate.py owns it."""
    from tasks.aggregate import explanation_schema as contract

    return contract(id_column)


def conform(frame: pd.DataFrame, id_column: str) -> pa.Table:
    """The engine's table in the contract's column order and types (fails loudly on a missing column)."""
    schema = explanation_schema(id_column)
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"explanation table lacks columns {missing}")
    table = pa.Table.from_pandas(frame[schema.names], preserve_index=False)
    return table.cast(schema)


@dataclass(frozen=True)
class ShardResult:
    """What a worker sends back: counts and where the part files are (never the rows themselves)."""

    index: int
    decisions: int
    rows: int
    part: str
    applicants: str
    review_ids: tuple[str, ...]
    seconds: float
    device: str
    worker: str


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
    from tasks.data import read_reference
    from tasks.engine import fit_reference, make_explainer
    from tasks.model import load_model

    key = (run.config_sha256, run.model_sha256, run.reference_sha256, device)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        model = load_model(config.model, len(config.features), device=device)
        stats = fit_reference(read_reference(config), config.features, config.explain.kernel_width)
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


def explain_shard(config: Config, shard: Shard, run: RunInfo, staging: str | Path) -> ShardResult:
    """Read a shard, explain it, write its explanation rows and report columns as part files."""
    started = time.perf_counter()
    device = worker_device()
    _set_threads(config.run.torch_threads)
    rows = read_shard(config, shard)
    loaded = _resources(config, run, device)
    from tasks.aggregate import explanation_table

    explanations = loaded.explainer.explain(rows.x, rows.ids)
    table = conform(explanation_table(explanations, rows.x, loaded.stats, config), config.data.id_column)
    part, applicants = part_paths(Path(staging), shard)
    write_table(table, part)
    write_table(rows.applicants, applicants)
    review_mask = table.column("needs_review").to_numpy(zero_copy_only=False)
    review = table.column(config.data.id_column).to_numpy(zero_copy_only=False)[review_mask]
    return ShardResult(
        index=shard.index,
        decisions=len(rows.ids),
        rows=table.num_rows,
        part=str(part),
        applicants=str(applicants),
        review_ids=tuple(dict.fromkeys(str(v) for v in review)),
        seconds=time.perf_counter() - started,
        device=_describe(device),
        worker=f"{os.uname().nodename}:{os.getpid()}",
    )


def _describe(device: str) -> str:
    if device.startswith("cuda"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"cuda (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else device
    return device


def merge_parts(results: Sequence[ShardResult], target: Path, id_column: str,
                metadata: dict[bytes, bytes] | None = None) -> int:
    """Write the shards' part files, in shard order, as one Parquet file (atomically); returns rows.

    Streams part by part, so memory holds one part at a time.
    """
    schema = explanation_schema(id_column)
    if metadata:
        schema = schema.with_metadata(metadata)
    total = 0
    with atomic_path(target) as temp, pq.ParquetWriter(temp, schema) as writer:
        for result in sorted(results, key=lambda r: r.index):
            table = pq.read_table(result.part).cast(schema)
            writer.write_table(table)
            total += table.num_rows
    return total

