"""Customer-report rendering throughput: PDFs/s in one process and on all cores, peak RSS.

    .venv/bin/python bench/bench_render.py                 # 2,000 documents per mode (the figure to quote)
    .venv/bin/python bench/bench_render.py --count 200     # quicker
    .venv/bin/python bench/bench_render.py --count 200 --experiments   # + batch-and-split experiments

Each mode runs in a fresh process (spawn), renders synthetic decisions of the demo's features through the
real API (tasks.render.render_customer_reports) in shards of 256, after a 5-document warm-up that is not
counted. PDFs/s is reported on wall time and on CPU time (CPU time is what a core delivers when other jobs
share the machine). Peak RSS is ru_maxrss of each rendering process.

--experiments also measures, in one process on the same documents:
  split-weasyprint  lay out N customers as ONE document, then write each customer's pages as its own PDF
                    (Document.copy + write_pdf: PDF/A, attachment and per-customer font subsets survive);
  split-pikepdf     lay out and write ONE PDF for N customers, then split it per customer with pikepdf
                    (needs the PDF/A metadata and attachment re-made, loses the tag tree, and every part
                    carries the font subsets of the whole batch).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import re
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
    from tasks.render_samples import demo_config, demo_run, synthetic_inputs

    config = demo_config(language, pdf_tags=tags)
    run = demo_run(config)
    rows, applicants = synthetic_inputs(count + WARMUP, config, seed=1234 + offset, id_prefix=f"B{offset}-")
    return config, run, rows, applicants


def _render_job(args: tuple[int, int, str, bool]) -> dict[str, float]:
    """Render ``count`` documents in this process (after a warm-up); return timings and peak RSS."""
    count, offset, language, tags = args
    from tasks.render import render_customer_reports

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


def _experiments(count: int, batch: int, language: str, tags: bool) -> None:
    import pikepdf

    from tasks.render import _pdf_settings, customer_documents
    from tasks.render_pdf import document_kind, layout, write

    config, run, rows, applicants = _inputs(count, language, tags)
    docs = customer_documents(rows, applicants, config, run)
    kind = document_kind("customer_report")
    settings = _pdf_settings(config, run)
    for doc in docs[:WARMUP]:
        write(layout(kind, doc.html, settings), doc.part, settings, kind)
    docs = docs[WARMUP:]

    def timed(fn: Any) -> tuple[float, float, list[bytes]]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - wall, time.process_time() - cpu, out

    def one_by_one() -> list[bytes]:
        return [write(layout(kind, d.html, settings), d.part, settings, kind) for d in docs]

    body = re.compile(r"<body>(.*)</body>", re.S)
    extra_css = "<style>.bd{break-before:page;page:bd}@page :nth(1 of bd){counter-reset:page 1}</style>"

    def batched_html(chunk: list[Any]) -> str:
        head = chunk[0].html.split("<body>")[0].replace("</head>", extra_css + "</head>")
        parts = [f'<div class="bd" id="bd-{i}">{body.search(d.html).group(1)}</div>' for i, d in enumerate(chunk)]
        return head + "<body>" + "".join(parts) + "</body></html>"

    def starts(document: Any, n: int) -> list[int]:
        first = {}
        for index, page in enumerate(document.pages):
            for anchor in page.anchors:
                if anchor.startswith("bd-"):
                    first.setdefault(int(anchor[3:]), index)
        return [first[i] for i in range(n)] + [len(document.pages)]

    def split_weasyprint() -> list[bytes]:
        out = []
        for s in range(0, len(docs), batch):
            chunk = docs[s:s + batch]
            document = layout(kind, batched_html(chunk), settings)
            bounds = starts(document, len(chunk))
            for i, d in enumerate(chunk):
                out.append(write(document, d.part, settings, kind, pages=document.pages[bounds[i]:bounds[i + 1]]))
        return out

    def split_pikepdf() -> list[bytes]:
        out = []
        for s in range(0, len(docs), batch):
            chunk = docs[s:s + batch]
            document = layout(kind, batched_html(chunk), settings)
            bounds = starts(document, len(chunk))
            whole = pikepdf.open(io.BytesIO(document.write_pdf(pdf_variant=settings.variant)))
            for i, d in enumerate(chunk):
                part = pikepdf.new()
                part.pages.extend(whole.pages[bounds[i]:bounds[i + 1]])
                part.Root.OutputIntents = part.copy_foreign(whole.make_indirect(whole.Root.OutputIntents))
                part.Root.Lang = pikepdf.String(settings.lang)
                with part.open_metadata(set_pikepdf_as_editor=False) as meta:
                    meta["pdfaid:part"], meta["pdfaid:conformance"] = "3", "B"
                    meta["dc:title"] = d.part.title
                spec = pikepdf.AttachedFileSpec(part, d.part.attachment, mime_type="application/json",
                                                filename=d.part.attachment_name)
                spec.obj.AFRelationship = pikepdf.Name.Data
                part.attachments[d.part.attachment_name] = spec
                part.Root.AF = pikepdf.Array([spec.obj])
                buffer = io.BytesIO()
                part.save(buffer, deterministic_id=True)
                out.append(buffer.getvalue())
        return out

    wall, cpu, single = timed(one_by_one)
    print(_line("one document per customer", len(docs), wall, cpu, "-"), flush=True)
    wall, cpu, split = timed(split_weasyprint)
    same = sum(a == b for a, b in zip(single, split, strict=True))
    print(_line(f"split-weasyprint (N={batch})", len(docs), wall, cpu, "-",
                f"  ({same}/{len(docs)} byte-identical to one-per-customer)"), flush=True)
    wall, cpu, pk = timed(split_pikepdf)
    size = sum(map(len, pk)) / len(pk) / 1024
    print(_line(f"split-pikepdf (N={batch})", len(docs), wall, cpu, "-",
                f"  ({size:.0f} KB/PDF vs {sum(map(len, single)) / len(single) / 1024:.0f}; no tags; shared fonts)"),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="documents per mode (default 2000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for 'all cores'")
    parser.add_argument("--language", choices=["en", "zh-CN"], default="en")
    parser.add_argument("--no-tags", action="store_true", help="untagged PDF/A-3b ([report] pdf_tags = false)")
    parser.add_argument("--experiments", action="store_true", help="also time batch-and-split variants")
    parser.add_argument("--batch", type=int, default=32, help="customers per batch in the experiments")
    args = parser.parse_args()
    tags = not args.no_tags
    print(f"limelight report rendering: {args.count} {args.language} documents per mode, PDF/A-3b"
          f"{' tagged' if tags else ''}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.count > 0:
        bench(args.count, args.workers, args.language, tags)
    if args.experiments:
        _experiments(min(args.count, 400) or 40, args.batch, args.language, tags)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other jobs on the machine inflate wall times)")


if __name__ == "__main__":
    main()
