"""Benchmarks of cdism_fast: ``python -m benchmarks`` (tables + JSON) or ``pytest benchmarks/``."""
