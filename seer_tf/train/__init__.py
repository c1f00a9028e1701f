"""seer_tf.train."""
