"""Benchmark harness: `python -m tests.bench [--smoke]` (see run.py)."""
