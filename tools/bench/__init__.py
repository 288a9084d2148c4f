"""Benchmarks. ``python -m tools.bench.memory --help`` measures the memory profiles."""
