"""Customer-report rendering throughput: PDFs/s in one process and on all cores, peak RSS.

    .venv/bin/python bench/bench_render.py                 # 2,000 documents per mode (the figure to quote)
    .venv/bin/python bench/bench_render.py --count 200     # quicker
    .venv/bin/python bench/bench_render.py --count 0 --experiments   # side-by-side design comparison only

Each mode runs in a fresh process (spawn), renders synthetic decisions of the demo's features through the
real API (tasks.report.render.render_customer_reports) in shards of 256, after a 5-document warm-up that is not
counted. PDFs/s is reported on wall time and on CPU time (CPU time is what a core delivers when other jobs
share the machine). Peak RSS is ru_maxrss of each rendering process.

--experiments times, in one process, interleaved document by document (so machine load hits all alike):
  whole statement   the customer's page and the rights notice + audit annex laid out and written by WeasyPrint
                    as ONE document per customer (the design before the shared pages);
  own + shared      what the renderer does: only the customer's own page per customer, the run's shared pages
                    (rights notice, annex) laid out once and appended with pikepdf
                    (tasks/report/shared_pages.py: append_shared);
  own + shared, stock parser   the same with WeasyPrint's tinyhtml5 parser and full UA stylesheet instead of
                    expat and templates/customer_report/ua.css (byte-identical PDFs).
Tried before and dropped (see git history of this file): laying out N customers as one document and splitting
it (WeasyPrint Document.copy, or pikepdf) was slower, and a pikepdf split leaked other customers' glyph subsets.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARD = 256
WARMUP = 5


def _inputs(count: int, language: str, tags: bool, offset: int = 0):
    from tasks.report.samples import demo_config, demo_run, synthetic_inputs

    config = demo_config(language, pdf_tags=tags)
    run = demo_run(config)
    rows, applicants = synthetic_inputs(count + WARMUP, config, seed=1234 + offset, id_prefix=f"B{offset}-")
    return config, run, rows, applicants


def _render_job(args: tuple[int, int, str, bool]) -> dict[str, float]:
    """Render ``count`` documents in this process (after a warm-up); return timings and peak RSS."""
    count, offset, language, tags = args
    from tasks.report.render import render_customer_reports

    config, run, rows, applicants = _inputs(count, language, tags, offset)
    ids = list(dict.fromkeys(rows["customer_id"]))
    with tempfile.TemporaryDirectory() as out:
        warm = rows[rows["customer_id"].isin(ids[:WARMUP])]
        render_customer_reports(warm, applicants, config, run, Path(out))
        wall, cpu = time.perf_counter(), time.process_time()
        made = 0
        for start in range(WARMUP, len(ids), SHARD):
            shard = rows[rows["customer_id"].isin(ids[start:start + SHARD])]
            made += len(render_customer_reports(shard, applicants, config, run, Path(out)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = sum(p.stat().st_size for p in Path(out).glob("*.pdf")) / max(made, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"docs": made, "wall": wall, "cpu": cpu, "rss_mb": rss, "kb_per_pdf": size / 1024}


def _line(name: str, docs: int, wall: float, cpu: float, rss: str, extra: str = "") -> str:
    return (f"{name:<26} {docs:>6} docs  {docs / wall:7.2f} PDF/s wall  {docs / cpu:7.2f} PDF/s per CPU-second  "
            f"peak RSS {rss}{extra}")


def bench(count: int, workers: int, language: str, tags: bool) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        one = pool.map(_render_job, [(count, 0, language, tags)])[0]
    print(_line("1 process", one["docs"], one["wall"], one["cpu"], f"{one['rss_mb']:.0f} MB",
                f"  ({one['kb_per_pdf']:.1f} KB/PDF)"), flush=True)
    per = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    wall = time.perf_counter()
    with ctx.Pool(workers) as pool:
        results = pool.map(_render_job, [(n, i + 1, language, tags) for i, n in enumerate(per)])
    wall = time.perf_counter() - wall  # includes process start, imports and warm-up: what a run sees
    docs = sum(r["docs"] for r in results)
    cpu = sum(r["cpu"] for r in results)
    inner = max(r["wall"] for r in results)
    rss = " / ".join(f"{r['rss_mb']:.0f}" for r in results) + " MB per worker"
    print(_line(f"{workers} processes (all cores)", docs, inner, cpu, rss,
                f"  ({docs / wall:.2f} PDF/s including start-up)"), flush=True)


# ---------------------------------------------------------------------------------------------- experiments


def _experiments(count: int, language: str, tags: bool) -> None:
    import dataclasses

    from tasks.report.letter import run_texts
    from tasks.report.pdf import document_kind, layout, write
    from tasks.report.render import (
        PAGES_MARK,
        _customer_pdf,
        _pdf_settings,
        _shared_after,
        customer_documents,
        shared_html,
    )

    config, run, rows, applicants = _inputs(count, language, tags)
    docs = customer_documents(rows, applicants, config, run)
    kind = document_kind("customer_report")
    stock = dataclasses.replace(kind, ua=None)
    settings = _pdf_settings(config, run)
    shared = run_texts(config, run)
    shared_after = _shared_after(kind, settings, shared)
    pages = shared_after(1).count
    body = shared_html(shared, 0).split("<body>", 1)[1].split("</body>", 1)[0]

    def whole(doc: Any) -> bytes:
        html = doc.html.replace(PAGES_MARK, str(1 + pages)).replace("</body>", body + "</body>")
        return write(layout(kind, html, settings), doc.part, settings, kind)

    variants = {
        "whole statement": whole,
        "own + shared": lambda doc: _customer_pdf(doc, kind, settings, shared_after),
        "own + shared, stock parser": lambda doc: _customer_pdf(doc, stock, settings, shared_after),
    }
    for doc in docs[:WARMUP]:
        for render in variants.values():
            render(doc)
    totals = {name: [0.0, 0.0] for name in variants}
    for doc in docs[WARMUP:]:
        for name, render in variants.items():
            wall, cpu = time.perf_counter(), time.process_time()
            render(doc)
            totals[name][0] += time.perf_counter() - wall
            totals[name][1] += time.process_time() - cpu
    made = len(docs) - WARMUP
    for name, (wall, cpu) in totals.items():
        print(_line(name, made, wall, cpu, "-", f"  ({cpu / made * 1000:.0f} ms CPU per PDF)"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="documents per mode (default 2000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for 'all cores'")
    parser.add_argument("--language", choices=["en", "zh-CN"], default="en")
    parser.add_argument("--no-tags", action="store_true", help="untagged PDF/A-3b ([report] pdf_tags = false)")
    parser.add_argument("--experiments", action="store_true", help="also time the design variants side by side")
    args = parser.parse_args()
    tags = not args.no_tags
    print(f"limelight report rendering: {args.count} {args.language} documents per mode, PDF/A-3b"
          f"{' tagged' if tags else ''}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.count > 0:
        bench(args.count, args.workers, args.language, tags)
    if args.experiments:
        _experiments(min(args.count, 200) or 40, args.language, tags)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other jobs on the machine inflate wall times)")


if __name__ == "__main__":
    main()
