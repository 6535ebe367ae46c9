"""`make bench`: the demo model optimised and measured on this machine (see bench/run.py)."""
