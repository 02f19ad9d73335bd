"""Benchmarks of issue 6: ``python -m benchmarks`` measures mountproc against its baselines."""
