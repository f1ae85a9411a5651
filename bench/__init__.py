"""Benchmarks of coiled-setup: start-up, round trips, critical path and waiting (see bench/run.py)."""
