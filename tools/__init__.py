"""Developer commands, outside the running app: benchmarks (``tools.bench``), the demo model
(``tools.demo_model``), the tested versions (``tools.update_versions``)."""
