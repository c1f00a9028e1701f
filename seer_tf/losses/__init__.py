"""seer_tf.losses: the SwAV swapped-prediction loss and its feature queue."""

from seer_tf.losses.swav import FeatureQueue, swav_loss

__all__ = ["FeatureQueue", "swav_loss"]
