"""Evaluation preprocessing, shared by evaluation, fine-tuning, feature extraction and export.

  * decode: JPEG with the accurate integer DCT (`INTEGER_ACCURATE`). TensorFlow's default
    (`INTEGER_FAST`) differs from PIL/libjpeg's by up to 6 levels per pixel, while the accurate
    one matches PIL exactly, and the PyTorch references (VISSL, torchvision) decode with PIL.
  * torchvision `Resize(256)` + `CenterCrop(224)` as VISSL's eval transforms: shorter side to
    `resize` (long side `int(resize * long / short)`), bilinear with antialiasing, rounded to
    uint8 levels as PIL returns them, then a centered `crop` x `crop` window (offsets rounded
    like torchvision's `round((h - crop) / 2)`). This is the one rounding of seer_tf.
  * ImageNet mean/std normalization (the trunk's input convention, models/regnet.py).
  * fine-tuning: torchvision's `RandomResizedCrop` (the same sampler as SwAV's multi-crop,
    `data.multicrop.sample_box`) + horizontal flip, stateless, so runs repeat exactly.
"""

from __future__ import annotations

import tensorflow as tf

from seer_tf.data import decode, multicrop

IMAGENET_MEAN = multicrop.IMAGENET_MEAN
IMAGENET_STD = multicrop.IMAGENET_STD


def decode_image_bytes(encoded):
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes (scalar tf.string) -> uint8 [h, w, 3]; raises one
    line on bad data. The guarded decoder of training and serving (`data.decode`): headers are
    checked before any pixel buffer is allocated, GIFs decode their first frame only. Up to
    its 64 Mpx decode cap images come at full size, JPEGs with the accurate DCT, so pixels
    equal PIL's (see module docstring)."""
    image = decode.decode_or_raise(encoded, max_pixels=decode.DEFAULT_MAX_DECODE_PIXELS)
    image.set_shape([None, None, 3])
    return image


def resize_shorter_side(images, size: int):
    """[h, w, 3] or [n, h, w, 3] (uint8 or float in 0..255) -> float32 with shorter side `size`.

    Bilinear with antialiasing (PIL's resampling filter), rounded and clipped to uint8 levels
    because torchvision's `Resize` on a PIL image returns uint8.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    h, w = shape[-3], shape[-2]
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = long * size // short
    new_h = tf.where(h <= w, size, new_long)
    new_w = tf.where(h <= w, new_long, size)
    out = tf.image.resize(tf.cast(images, tf.float32), tf.stack([new_h, new_w]),
                          method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def center_crop(images, size: int):
    """Centered `size` x `size` window of [h, w, c] or [n, h, w, c] (torchvision CenterCrop
    offsets). The image must be at least `size` on both sides."""
    shape = tf.shape(images)
    h, w = shape[-3], shape[-2]
    top = tf.cast(tf.round(tf.cast(h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(w - size, tf.float32) / 2.0), tf.int32)
    out = images[..., top:top + size, left:left + size, :]
    return tf.ensure_shape(out, images.shape[:-3] + [size, size, images.shape[-1]])


def normalize(images):
    """0..255 pixels -> (x / 255 - mean) / std, float32 (the trunk's input convention)."""
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def eval_preprocess(images, resize: int = 256, crop: int = 224):
    """uint8 [h, w, 3] or [n, h, w, 3] -> normalized float32 [.., crop, crop, 3].

    VISSL/torchvision evaluation transform: Resize(resize) -> CenterCrop(crop) -> Normalize.
    `resize=0` resizes the shorter side straight to `crop`.
    """
    resize = int(resize) or int(crop)
    if resize < crop:
        raise ValueError(f"resize ({resize}) must be >= crop ({crop})")
    return normalize(center_crop(resize_shorter_side(images, resize), crop))


def eval_batches(dataset, resize: int, crop: int, batch_size: int):
    """(uint8 image, *extras) -> batches of (normalized crop, *extras), in order."""
    return dataset.map(lambda image, *rest: (eval_preprocess(image, resize, crop), *rest),
                       num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).batch(batch_size).prefetch(2)


def train_preprocess(image, seed, crop: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """uint8 [h, w, 3] -> normalized float [crop, crop, 3]: RandomResizedCrop + flip (torchvision
    `get_params`, as `multicrop.sample_box` draws it for SwAV), bilinear with antialiasing.

    Stateless: `seed` is an int [2] tensor (one per example, see `augment`), so runs repeat
    exactly, also under TF_DETERMINISTIC_OPS, which refuses the seedless stateful image ops.
    """
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    box, _ = multicrop.sample_box(box_seed, shape[0], shape[1], scale, ratio)
    out = multicrop.resized_crop(image, box, crop)  # float in [0, 1]
    out = tf.image.stateless_random_flip_left_right(out, flip_seed)
    return (out - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def augment(dataset, crop: int = 224, seed: int = 0, scale=(0.08, 1.0)):
    """(uint8 image, label) -> (`train_preprocess`ed image, label), new crops every epoch."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(dataset, seeds).map(
        lambda pair, s: (train_preprocess(pair[0], s, crop, scale), pair[1]),
        num_parallel_calls=tf.data.AUTOTUNE)
