"""The coordinator's performance suite: `python -m bench` (see bench/README.md)."""
