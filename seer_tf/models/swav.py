"""The SwAV network: RegNet trunk once per crop resolution, then the projection head once.

Multi-crop gives crops of two sizes (2x224 + 4x96 in SEER). Crops of equal size are batched
together through the trunk (one pass per resolution, as the official `main_swav.py` does with
`unique_consecutive`), the pooled features are concatenated in crop order, and the head and
prototypes run once on all of them. Output rows are crop-major: rows [c*B, (c+1)*B) are crop c.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from seer_tf.models.heads import ProjectionHead, Prototypes
from seer_tf.models.regnet import RegNet


@keras.saving.register_keras_serializable(package="seer_tf")
class SwAVModel(keras.Model):
    """backbone + ProjectionHead + Prototypes; `call(crops)` -> {"embeddings", "scores"}."""

    def __init__(self, backbone, dims, num_prototypes, use_bn=False, use_bias=True,
                 sync_bn=False, **kwargs):
        kwargs.setdefault("name", "swav")
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.backbone = backbone
        dims = [int(d) for d in dims]
        if dims[0] != backbone.widths[-1]:
            raise ValueError(f"head input dim {dims[0]} != trunk output width {backbone.widths[-1]}")
        self.head = ProjectionHead(dims, use_bn=use_bn, use_bias=use_bias, sync_bn=sync_bn, name="head")
        self.prototypes = Prototypes(num_prototypes, name="prototypes")
        self._head_args = dict(dims=dims, num_prototypes=self.prototypes.num_prototypes,
                               use_bn=bool(use_bn), use_bias=bool(use_bias), sync_bn=bool(sync_bn))
        # Built at construction: the head's input size is known, and `keras.models.load_model`
        # only restores weights of layers that exist when it loads them.
        self.build_all()

    def build_all(self):
        """Create every variable (trunk, head, prototypes) without running images through."""
        if not self.backbone.built:
            self.backbone.build((None, None, None, 3))
        if not self.head.built:
            self.head.build((None, self.head.dims[0]))
        if not self.prototypes.built:
            self.prototypes.build((None, self.head.dims[-1]))
        self.built = True

    def build(self, input_shape=None):
        self.build_all()

    def features(self, crops, training=None):
        """Pooled trunk features of all crops, crop-major, one trunk pass per resolution run."""
        groups, start = [], 0
        for i in range(1, len(crops) + 1):
            if i == len(crops) or crops[i].shape[1:3] != crops[start].shape[1:3]:
                groups.append(crops[start:i])
                start = i
        feats = [self.backbone(tf.concat(g, axis=0) if len(g) > 1 else g[0],
                               training=training)["pooled"] for g in groups]
        return tf.concat(feats, axis=0) if len(feats) > 1 else feats[0]

    def call(self, crops, training=None):
        if not isinstance(crops, (list, tuple)):
            crops = [crops]
        embeddings = self.head(self.features(crops, training=training), training=training)
        return {"embeddings": embeddings, "scores": self.prototypes(embeddings)}

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                **self._head_args}
