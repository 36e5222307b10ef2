"""The computations behind pipeline jobs; no database or HTTP code (see coordinator.pipeline.tasks)."""
