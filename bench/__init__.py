"""Benchmarks: run as scripts (`python bench/cpu_stages.py`) or modules (`python -m bench.cpu_stages`)."""
