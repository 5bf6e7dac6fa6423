"""mer.pipeline: decode stages, the command line and scheduling (local or dask.distributed)."""
