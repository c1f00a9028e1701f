"""seer_tf.eval."""
