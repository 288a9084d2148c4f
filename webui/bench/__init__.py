"""Benchmarks that print figures (run with ``python3 -m webui.bench.<name>``)."""
