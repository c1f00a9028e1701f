"""seer_tf.models."""
