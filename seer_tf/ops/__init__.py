"""Native (C++) TensorFlow ops, compiled on first use (see native.py)."""
