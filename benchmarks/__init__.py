"""Benchmarks whose latest results are recorded in BENCHMARKS.md."""
