"""limelight's work: plain, typed functions with no Prefect import (flows/ wires them into the flow).

One package per stage of a run, in the order a run goes through them (docs/architecture.md, "How a run works"):

- ``tasks.inputs``: what a run is given: the config, the decisions and reference Parquet, the nightly
  selection, the bank's model file.
- ``tasks.plan``: what a run will do: ``limelight validate``, the selection cut into shards, their sizes.
- ``tasks.engine``: batched LIME on one torch device (sampler, kernel, surrogate, stability).
- ``tasks.explain``: one shard on a worker: read, explain, aggregate into the explanations table, merge.
- ``tasks.report``: the customer letters and the run summary as PDFs, their texts, their index, re-rendering.
- ``tasks.run``: the run's facts, resume state, deadline arithmetic and manifest, and publishing.
- ``tasks.demo``: the embedded demo portfolio and model.

``tasks.io`` (atomic writes, checksums) and ``tasks.errors`` (one-line errors) are used by every stage. A stage
imports only the stages below it (the import contracts in pyproject.toml, checked by ``make lint``).
"""
