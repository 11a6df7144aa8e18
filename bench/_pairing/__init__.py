"""Parts of bench/pairing.py (a folder, so `make bench` does not run them as benchmarks)."""
