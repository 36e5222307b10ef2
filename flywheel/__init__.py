"""The `flywheel` console entry point; it only dispatches to the component CLIs, lazily."""
