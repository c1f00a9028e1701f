"""SavedModel for serving: raw images in, trunk features (and SwAV outputs) out.

The preprocessing is inside the graph, so a client sends what it has and gets the same features
`seer_tf.eval` computes (the functions are shared: `eval.inputs.eval_preprocess`):
  * `serving_bytes`: tf.string [N] of encoded JPEG/PNG/GIF/BMP/WebP. Each image is decoded
    (JPEG with the accurate DCT, equal to PIL), its shorter side resized to `resize`, center
    cropped to `crop`, normalized with ImageNet mean/std. Images may differ in size. The
    decoder is data.decode's guarded one: sizes are read from the header first, so an image
    declaring more than `max_decode_pixels` (or an undecodable one) fails its request with
    "serving_bytes: image could not be decoded: index I, status too_large" (InvalidArgumentError)
    without allocating its pixels, and the server goes on; it is never silently dropped.
    Also exported as `serving_default`.
  * `serving_images`: uint8 [N, H, W, 3], any H, W (one size per batch): same minus decoding.
Outputs: "pooled" [N, d] (the SEER/VISSL `avgpool` feature, or another endpoint average-pooled),
and for a SwAVModel also "embedding" (the L2-normalized projection), "prototype" (int64 argmax
of the first prototype head's scores, the image's cluster), "prototype_score" (its score) and
"prototype_scores" (all K scores of that head).

Plain `tf.Module` + `tf.saved_model.save` with explicit signatures, so TF Serving,
`saved_model_cli run` and `tf.saved_model.load` all work without Keras or seer_tf installed.
This module must not import seer_tf.train (docs/design.md, layering).
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from seer_tf.eval.features import pooled_endpoint
from seer_tf.data import decode as decode_lib
from seer_tf.eval.inputs import eval_preprocess
from seer_tf.weights import trunk_of


class ServingModule(tf.Module):
    """The two serving functions of a RegNet or SwAVModel, and the model's variables.

    Only the underlying tf.Variables are tracked, not the Keras model object: tracking the Keras 3
    model as a child gives a SavedModel whose TF1-style loading (`saved_model_cli run`, TF
    Serving) cannot find the variables. The model is reached through the functions' closures.
    """

    def __init__(self, model, resize: int = 256, crop: int = 224, endpoint: str = "pooled",
                 include_swav: Optional[bool] = None,
                 max_pixels: int = decode_lib.DEFAULT_MAX_PIXELS,
                 max_decode_pixels: int = decode_lib.DEFAULT_MAX_DECODE_PIXELS):
        super().__init__(name="seer_serving")
        trunk = trunk_of(model)
        has_head = hasattr(model, "head") and hasattr(model, "prototypes")
        include_swav = has_head if include_swav is None else bool(include_swav)
        if include_swav and not has_head:
            raise ValueError("include_swav needs a SwAVModel (a trunk with head and prototypes)")
        if include_swav and endpoint != "pooled":
            raise ValueError("the SwAV head reads the pooled feature: use endpoint='pooled'")
        resize, crop = int(resize) or int(crop), int(crop)
        if resize < crop:
            raise ValueError(f"resize ({resize}) must be >= crop ({crop})")
        self.resize, self.crop, self.endpoint = resize, crop, endpoint
        self.include_swav = include_swav
        self.model_variables = [v.value for v in model.variables]

        def features(images):
            pooled = tf.cast(pooled_endpoint(trunk(images, training=False), endpoint), tf.float32)
            out = {"pooled": pooled}
            if include_swav:
                embedding = model.head(pooled, training=False)
                scores = model.prototypes(embedding)[0]
                out["embedding"] = tf.cast(embedding, tf.float32)
                out["prototype"] = tf.argmax(scores, axis=-1, output_type=tf.int64)
                out["prototype_score"] = tf.reduce_max(scores, axis=-1)
                out["prototype_scores"] = scores
            return out

        def preprocess_one(encoded):  # the guarded decoder: caps checked on the header
            status, image = decode_lib.decode(encoded, max_pixels, max_decode_pixels)
            image = tf.cond(tf.equal(status, decode_lib.OK), lambda: image,
                            lambda: tf.zeros([crop, crop, 3], tf.uint8))
            return status, eval_preprocess(image, resize, crop)

        def serve_bytes(images):
            status, batch = tf.map_fn(preprocess_one, images, fn_output_signature=(
                tf.TensorSpec([], tf.int32), tf.TensorSpec([crop, crop, 3], tf.float32)))
            return features(decode_lib.assert_decoded(status, batch, "serving_bytes: image"))

        def serve_images(images):
            return features(eval_preprocess(images, resize, crop))

        self.serving_bytes = tf.function(
            serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        self.serving_images = tf.function(
            serve_images,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])


def export(model, path: str, resize: int = 256, crop: int = 224, endpoint: str = "pooled",
           include_swav: Optional[bool] = None) -> ServingModule:
    """Write the SavedModel to `path` with signatures serving_bytes, serving_images and
    serving_default (= serving_bytes); returns the module (its functions are callable too)."""
    module = ServingModule(model, resize, crop, endpoint, include_swav)
    signatures = {
        "serving_bytes": module.serving_bytes.get_concrete_function(),
        "serving_images": module.serving_images.get_concrete_function(),
    }
    signatures["serving_default"] = signatures["serving_bytes"]
    tf.saved_model.save(module, path, signatures=signatures)
    return module
