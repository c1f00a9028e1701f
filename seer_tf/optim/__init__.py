"""seer_tf.optim."""
