"""seer_tf: SEER (SwAV-pretrained RegNetY on uncurated images) in Keras 3 / TensorFlow."""

__version__ = "0.1.0"
