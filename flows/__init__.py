"""limelight's orchestration: Prefect tasks and flows around tasks/, the Dask workers, the CLI."""
