"""The documents: one PDF letter per customer and the run summary (WeasyPrint), their texts and reason
catalogs, the report index ``reports.parquet``, and re-rendering a published run for an auditor.

The public names below, by module, load on first use (``lazy_loader``): importing one module of this package
does not import the others.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "render": ["render_customer_reports", "render_run_summary"],
        "text": ["load_notice", "load_reason_catalog", "report_sources"],
        "index": ["read_index", "write_index"],
        "rerender": ["Rerendered", "load_manifest"],
        "preflight": ["planned_decisions", "preflight_checks"],
    },
)
