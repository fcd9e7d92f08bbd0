"""What a run will do: ``limelight validate``, the selection cut into shards, and how big shards and render
batches are.

The public names below, by module, load on first use (``lazy_loader``): importing one module of this package
does not import the others.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "validate": ["Validation", "validate_all"],
        "shards": ["Shard", "plan_shards", "read_shard", "split_shard"],
        "sizing": ["RunSizes", "estimate_output_bytes", "run_sizes"],
        "init": ["InitResult", "plan_init", "write_init"],
    },
)
