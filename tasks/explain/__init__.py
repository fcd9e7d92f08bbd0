"""One shard on a worker: read its decisions, explain them (tasks/engine), aggregate each into the public
explanations table, and merge the shards' part files into ``explanations.parquet``.

The public names below, by module, load on first use (``lazy_loader``): importing one module of this package
does not import the others.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "worker": ["Failure", "ShardResult", "explain_shard", "merge_parts", "prepare_worker"],
        "aggregate": [
            "explanation_schema", "explanation_table", "quality_summary", "read_for_summary", "review_reasons",
        ],
    },
)
