"""A run's own records: its facts (:class:`RunInfo`), the resume state of a killed run, deadline arithmetic,
the manifest, and publishing the staged outputs.

The public names below, by module, load on first use (``lazy_loader``): importing one module of this package
does not import the others.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "info": ["RunInfo"],
        "state": ["find_run", "load_record", "run_identity", "save_record", "write_state"],
        "deadline": ["DeadlineMissed", "estimate", "parse_deadline"],
        "manifest": ["build_manifest", "build_run_info", "publish"],
    },
)
