"""seer_tf.data."""
