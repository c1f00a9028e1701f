"""SwAV/SEER multi-crop augmentation of one decoded image: pure tensor ops, no file IO.

Recipe (docs/design.md section 1; facebookresearch/swav `src/multicropdataset.py`, VISSL
`ImgPilColorDistortion`/`ImgPilGaussianBlur`, torchvision `RandomResizedCrop`/`ColorJitter`):
per crop, independently,
  1. random resized crop: area fraction U(scale), aspect log-uniform in (3/4, 4/3), 10 attempts,
     then torchvision's fallback (central crop clamped to the aspect range); bilinear resize,
     antialiased like PIL's resize that torchvision uses on PIL images;
  2. horizontal flip, p = 0.5;
  3. color jitter with p = 0.8: brightness, contrast, saturation factors U(0.2, 1.8), hue shift
     U(-0.2, 0.2), applied in a random order, each as torchvision/PIL define them (brightness
     blends with black, contrast with the mean gray level, saturation with the per-pixel gray,
     hue rotates in HSV), clipped to [0, 1] after each;
  4. grayscale, p = 0.2 (ITU-R 601 luma, as PIL's convert("L"));
  5. Gaussian blur, p = 0.5, sigma U(0.1, 2.0) px (PIL `GaussianBlur(radius=sigma)` in SwAV);
  6. normalize with the ImageNet mean and std.

Every random decision comes from a stateless op keyed by an explicit seed, and is drawn by
`sample_crop_params` into a dict that `apply_crop_params` consumes: tests read the same dict
that drives the pixels, and a fixed seed gives the same crops eagerly and inside tf.data.
Blur kernel: radius ceil(3 * sigma_max) = 6 px (13 taps) for both crop sizes. SimCLR/BYOL use
kernel = 10% of the crop (23 taps at 224), but with sigma <= 2 px the extra taps weigh below
e^-4.5 = 1%; sigma is in pixels in SwAV, so the 96 crops need the same kernel as the 224 ones.
"""

import dataclasses
import math

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """`count` crops of `size` x `size` px, area fraction in `scale`, aspect in `ratio`."""
    size: int
    count: int
    scale: tuple = (0.14, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)


# SwAV / SEER: 2 x 224 at (0.14, 1) for the assignment crops, then 4 x 96 at (0.05, 0.14).
SWAV_CROPS = (CropSpec(224, 2, (0.14, 1.0)), CropSpec(96, 4, (0.05, 0.14)))


def parse_crops(text):
    """'2x224,4x96' -> CropSpecs; the first group gets scale (0.14, 1), later ones (0.05, 0.14)
    as in SwAV; an explicit range is written '4x96:0.05:0.14'."""
    specs = []
    for i, part in enumerate(text.split(",")):
        head, *rng = part.strip().split(":")
        count, size = (int(v) for v in head.lower().split("x"))
        scale = tuple(float(v) for v in rng) if rng else ((0.14, 1.0) if i == 0 else (0.05, 0.14))
        specs.append(CropSpec(size, count, scale))
    return tuple(specs)


@dataclasses.dataclass(frozen=True)
class Augment:
    """Probabilities and ranges of the per-crop augmentation; defaults are the SwAV recipe.

    Set a probability to 0 to disable a step (the decision is still drawn, so the other
    decisions for a seed do not move). `mean=None` skips normalization (pixels in [0, 1]).
    """
    flip: float = 0.5
    jitter: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale: float = 0.2
    blur: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    antialias: bool = True
    attempts: int = 10
    jit_compile: bool = True  # XLA for the post-resize chain (see `_augment_resized_xla`)

    @property
    def blur_radius(self):
        return int(math.ceil(3.0 * self.blur_sigma[1]))


def _uniform(seed, shape, low, high, dtype=tf.float32):
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=dtype)


def sample_box(seed, height, width, scale, ratio=(3 / 4, 4 / 3), attempts=10):
    """torchvision RandomResizedCrop.get_params as stateless ops: int32 (y, x, h, w, fallback).

    All attempts are drawn at once and the first valid one is kept, which gives the same
    distribution as the sequential loop.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    hf, wf = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    u = _uniform(seeds[0], [2, attempts], 0.0, 1.0, tf.float64)
    target = hf * wf * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[1])
    w = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    h = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(valid)
    offsets = _uniform(seeds[1], [2], 0.0, 1.0, tf.float64)
    bh, bw = h[first], w[first]
    by = tf.minimum(tf.cast(offsets[0] * tf.cast(height - bh + 1, tf.float64), tf.int32),
                    height - bh)
    bx = tf.minimum(tf.cast(offsets[1] * tf.cast(width - bw + 1, tf.float64), tf.int32),
                    width - bw)
    # Fallback: the whole image, clamped to the aspect range, centered.
    in_ratio = wf / hf
    fw = tf.where(in_ratio > ratio[1], tf.cast(tf.round(hf * ratio[1]), tf.int32), width)
    fh = tf.where(in_ratio < ratio[0], tf.cast(tf.round(wf / ratio[0]), tf.int32), height)
    fy, fx = (height - fh) // 2, (width - fw) // 2
    box = tf.where(found, tf.stack([by, bx, bh, bw]), tf.stack([fy, fx, fh, fw]))
    return box, tf.logical_not(found)


def _in_range(u, strength):
    """U(0, 1) -> U(max(0, 1 - strength), 1 + strength), torchvision's jitter factor range."""
    low = max(0.0, 1.0 - strength)
    return low + (1.0 + strength - low) * u


def sample_crop_params(seed, height, width, spec, augment=Augment()):
    """Every random decision of one crop, as a dict of tensors (see module docstring)."""
    s = tf.random.experimental.stateless_split(seed, 8)
    box, fallback = sample_box(s[0], height, width, spec.scale, spec.ratio, augment.attempts)
    coins = _uniform(s[1], [4], 0.0, 1.0)
    factors = _uniform(s[2], [3], 0.0, 1.0)
    return {
        "box": box,  # y, x, h, w in the decoded image
        "fallback": fallback,
        "flip": coins[0] < augment.flip,
        "jitter": coins[1] < augment.jitter,
        "brightness": _in_range(factors[0], augment.brightness),
        "contrast": _in_range(factors[1], augment.contrast),
        "saturation": _in_range(factors[2], augment.saturation),
        "hue": _uniform(s[3], [], -augment.hue, augment.hue),
        "order": tf.cast(tf.argsort(_uniform(s[4], [4], 0.0, 1.0)), tf.int32),
        "grayscale": coins[2] < augment.grayscale,
        "blur": coins[3] < augment.blur,
        "sigma": _uniform(s[5], [], augment.blur_sigma[0], augment.blur_sigma[1]),
    }


def _gray(image):
    return tf.tensordot(image, tf.constant(_LUMA), axes=[[2], [0]])[..., None]


def color_jitter(image, params):
    """torchvision ColorJitter on a float [h, w, 3] image in [0, 1], in params['order'].

    Brightness, contrast and saturation are all clip(f * x + (1 - f) * m) with m = 0, the mean
    gray level, or the per-pixel gray: one branch-free formula, the op picked by one-hot
    weights; only the hue rotation is a conditional. The four steps are a while loop, so the
    graph (and the XLA program, compiled in ~1 s instead of ~10 s for a 4-way switch per
    unrolled step) holds each op once.
    """
    factors = tf.stack([params["brightness"], params["contrast"], params["saturation"], 1.0])

    def step(k, x):
        op = params["order"][k]
        is_op = [tf.cast(tf.equal(op, j), tf.float32) for j in range(3)]
        factor = tf.gather(factors, op)
        gray = _gray(x)
        target = is_op[1] * tf.reduce_mean(gray) + is_op[2] * gray
        x = tf.clip_by_value(factor * x + (1.0 - factor) * target, 0.0, 1.0)
        x = tf.cond(tf.equal(op, 3),
                    lambda: tf.clip_by_value(tf.image.adjust_hue(x, params["hue"]), 0.0, 1.0),
                    lambda: x)
        return k + 1, x

    _, image = tf.while_loop(lambda k, x: k < 4, step, (tf.constant(0), image),
                             maximum_iterations=4)
    return image


def gaussian_blur(image, sigma, radius):
    """Separable Gaussian blur of a float [h, w, 3] image, symmetric padding at the borders.

    Written as shifted multiply-adds: XLA fuses them into one pass per axis (3x faster on CPU
    than `depthwise_conv2d`, which has no fast CPU kernel for 3 channels).
    """
    height, width = image.shape[0], image.shape[1]
    radius = max(0, min(radius, height, width))
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    x = tf.pad(image, [[radius, radius], [0, 0], [0, 0]], "SYMMETRIC")
    x = tf.add_n([kernel[i] * x[i:i + height] for i in range(2 * radius + 1)])
    x = tf.pad(x, [[0, 0], [radius, radius], [0, 0]], "SYMMETRIC")
    return tf.add_n([kernel[i] * x[:, i:i + width] for i in range(2 * radius + 1)])


def resized_crop(image, box, size, antialias=True):
    """uint8 [H, W, 3], int32 (y, x, h, w) -> float32 [size, size, 3] in [0, 1], bilinear."""
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])
    x = tf.image.resize(crop, [size, size], "bilinear", antialias=antialias)
    return tf.clip_by_value(x / 255.0, 0.0, 1.0)


def augment_resized(x, params, augment=Augment()):
    """Flip, jitter, gray, blur, normalize one resized crop (float [s, s, 3] in [0, 1])."""
    x = tf.cond(params["flip"], lambda: tf.reverse(x, [1]), lambda: x)
    x = tf.cond(params["jitter"], lambda: color_jitter(x, params), lambda: x)
    x = tf.cond(params["grayscale"], lambda: tf.tile(_gray(x), [1, 1, 3]), lambda: x)
    x = tf.cond(params["blur"], lambda: gaussian_blur(x, params["sigma"], augment.blur_radius),
                lambda: x)
    if augment.mean is not None:
        x = (x - tf.constant(augment.mean)) / tf.constant(augment.std)
    return x


# Everything after the resize is static-shaped, so it runs as XLA by default: XLA fuses the
# elementwise jitter/gray/blur/normalize chain (about 3x faster on CPU than one kernel per op).
# One program per crop size and Augment, compiled once per process (a few seconds each); one
# program per crop rather than one for all crops keeps compile time linear in the number of
# sizes. The resize stays outside: its input (the crop box) is dynamic. The plain-graph variant
# is a tf.function too, so that building a pipeline does not re-trace it every time.
_augment_resized_xla = tf.function(augment_resized, jit_compile=True, autograph=False)
_augment_resized_graph = tf.function(augment_resized, autograph=False)
_sample_crop_params = tf.function(lambda seed, h, w, spec, augment: sample_crop_params(
    seed, h, w, spec, augment), autograph=False)


def _augment_fn(augment):
    return _augment_resized_xla if augment.jit_compile else _augment_resized_graph


def apply_crop_params(image, params, size, augment=Augment()):
    """Crop, resize, flip, jitter, gray, blur, normalize: uint8 [H, W, 3] -> float32 [s, s, 3]."""
    x = resized_crop(image, params["box"], size, augment.antialias)
    return _augment_fn(augment)(x, params, augment)


def crop_seeds(seed, crops):
    """One seed per crop of a sample (stateless split of the sample's seed)."""
    return tf.random.experimental.stateless_split(seed, sum(c.count for c in crops))


def multicrop_with_params(image, seed, crops=SWAV_CROPS, augment=Augment()):
    """All crops of one image, in spec order, and the decisions that made each one."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    seeds = crop_seeds(seed, crops)
    outputs, params = [], []
    for spec in crops:
        for _ in range(spec.count):
            p = _sample_crop_params(seeds[len(params)], height, width, spec, augment)
            outputs.append(apply_crop_params(image, p, spec.size, augment))
            params.append(p)
    return tuple(outputs), tuple(params)


def multicrop(image, seed, crops=SWAV_CROPS, augment=Augment()):
    """uint8 [H, W, 3] image + int [2] seed -> tuple of float32 [size, size, 3] crops."""
    return multicrop_with_params(image, seed, crops, augment)[0]
