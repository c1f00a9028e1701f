"""Experiment configs: one `get_config()` per file, read only by `seer_tf.bin`."""
