"""Shards: file slices of ``[run] shard_size`` decisions, planned in the flow process and read on a worker.

A shard is a list of pieces, each a row range ``[start, stop)`` of one Parquet file, in the order the
decisions are explained. Without ``--ids`` the pieces are contiguous slices of the files in order;
with ``--ids`` consecutive rows of one file collapse into one piece. Only paths and row numbers
travel to the workers: each worker reads its own slice (:func:`read_shard`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.inputs.config import Config
from tasks.inputs.data import DecisionRows, DecisionsIndex, concat_rows, read_rows, read_rows_at
from tasks.inputs.sources import SourceFile


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
    """Decisions ``[first, first + size)`` of the run's selection, as file pieces.

    ``path`` is empty for a planned shard; the halves of a shard split after failing are
    ``path + (0,)`` and ``path + (1,)``, so (index, path) sorts in the order of the selection.
    """

    index: int
    pieces: tuple[Piece, ...]
    first: int = 0
    path: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}" + "".join(f".{i}" for i in self.path)

    @property
    def order(self) -> tuple[int, tuple[int, ...]]:
        return self.index, self.path


def split_shard(shard: Shard) -> tuple[Shard, Shard]:
    """The two halves of a shard (of at least two decisions), in order."""
    if shard.size < 2:
        raise ValueError("a shard of one decision cannot be split")
    half = shard.size // 2
    left: list[Piece] = []
    right: list[Piece] = []
    seen = 0
    for piece in shard.pieces:
        if seen + piece.size <= half:
            left.append(piece)
        elif seen >= half:
            right.append(piece)
        else:
            cut = piece.start + (half - seen)
            left.append(Piece(piece.source, piece.start, cut))
            right.append(Piece(piece.source, cut, piece.stop))
        seen += piece.size
    return (Shard(shard.index, tuple(left), shard.first, (*shard.path, 0)),
            Shard(shard.index, tuple(right), shard.first + half, (*shard.path, 1)))


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
        shards.append(Shard(number, tuple(_pieces(index, chunk)), first))
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
                shards.append(Shard(len(shards), tuple(pieces), len(shards) * shard_size))
                pieces, room = [], shard_size
    if pieces:
        shards.append(Shard(len(shards), tuple(pieces), len(shards) * shard_size))
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
