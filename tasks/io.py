"""Atomic file writes and checksums.

Every output of a run is written to a temporary name in the target's own folder and then renamed
over the target, so a reader (or a crash) never sees a half-written file: the file is either the
old one, the new one, or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it over ``target``.

    The temporary file lives in the same folder (same file system), so the final ``os.replace``
    is atomic. On an exception the temporary file is removed and the target is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as temp:
        temp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | Path, text: str) -> Path:
    return write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | Path, data: Any) -> Path:
    return write_text_atomic(target, json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_table_atomic(table: Any, target: str | Path) -> Path:
    """A pyarrow Table as a Parquet file, atomically."""
    import pyarrow.parquet as pq

    with atomic_path(target) as temp:
        pq.write_table(table, temp)
    return Path(target)


def replace_dir(source: Path, target: Path) -> None:
    """Move the folder ``source`` to ``target``, replacing any folder already there.

    Two renames: the old folder steps aside first, so at no point is ``target`` a mix of old and
    new files. The old folder is deleted afterwards.
    """
    target = Path(target)
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder as the sorted (relative path, file hash) pairs of its files.

    Hidden files and names starting with ``_`` (``_SUCCESS``, ``_metadata``) are skipped, as pyarrow's
    dataset discovery skips them, so the hash covers exactly the data that is read.
    """
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith((".", "_")) for part in relative.parts):
            continue
        digest.update(relative.as_posix().encode("utf-8") + b"\0" + file_sha256(file).encode("ascii") + b"\n")
    return digest.hexdigest()


def toml_value(value: Any) -> str:
    """``value`` (a bool, number, string, path, or a list or tuple of them) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """TOML text for a config-shaped document: tables (nested), arrays of tables, scalars and lists.

    (tomllib only reads; this writes the variants of a config that tests and benchmarks need.)
    """
    lines: list[str] = []

    def table(name: str, body: dict[str, Any], header: str) -> None:
        lines.append(header)
        lines.extend(f"{k} = {toml_value(v)}" for k, v in body.items() if not isinstance(v, dict) and v is not None)
        lines.append("")
        for key, value in body.items():
            if isinstance(value, dict):
                table(f"{name}.{key}", value, f"[{name}.{key}]")

    for name, body in data.items():
        if isinstance(body, list):
            for item in body:
                table(name, item, f"[[{name}]]")
        else:
            table(name, body, f"[{name}]")
    return "\n".join(lines)


def release_unused_memory() -> None:
    """Hand the memory Arrow's pool has freed back to the system. Its allocator (mimalloc) keeps freed pages for
    reuse, so streaming a million rows batch by batch left the flow process tens of MB larger at the end than at
    a hundred thousand (docs/performance.md, "Memory at scale"). Cheap: call it once per batch streamed."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
