"""seer_tf.losses: the SwAV swapped-prediction loss and its feature queue (`losses/swav.py`).

Import `seer_tf.losses.swav` directly; this package file stays import-free so that the Bazel
`:package` target (all `__init__.py` files) does not silently depend on `:swav_loss`.
"""
