"""Benchmarks. ``python -m webui.bench.memory --help`` measures the memory profiles."""
