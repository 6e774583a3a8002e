"""Reproducible speed and parity measurements: ``python -m benchmarks --help``."""
