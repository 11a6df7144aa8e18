"""Helpers of bench/scale.py and the one-stage benchmarks (a folder, so `make bench` does not run
them as benchmarks)."""
