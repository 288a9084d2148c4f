"""Command-line tools for developers: benchmarks, the demo model, the tested versions."""
