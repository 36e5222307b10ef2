"""Reproducible benchmarks of Flywheel; each prints ratios measured side by side in one run."""
