"""What a run is given: the config, the decisions and reference Parquet, the nightly selection, the model.

The public names below, by module, load on first use (``lazy_loader``): importing one module of this package
does not import the others.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["Config", "FeatureConfig", "load_config", "parse_config"],
        "data": [
            "DecisionRows", "DecisionsIndex", "read_id_file", "read_reference", "read_rows", "scan_decisions",
            "select_positions",
        ],
        "schedule": ["night_sha256", "parse_run_date", "select_day"],
        "model": ["LoadedModel", "load_model", "model_record", "model_sha256"],
    },
)
