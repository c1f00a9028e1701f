"""seer_tf.bin."""
