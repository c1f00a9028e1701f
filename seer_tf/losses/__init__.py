"""seer_tf.losses."""
