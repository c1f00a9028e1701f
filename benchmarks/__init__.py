"""seer_tf's benchmarks against PyTorch peers written in this repository (not installed).

Run from the repository root: `python -m benchmarks.run --what=step` (see benchmarks/run.py).
"""
