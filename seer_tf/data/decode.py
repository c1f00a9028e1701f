"""Robust image decoding for uncurated streams, with exact bad-file statistics.

SEER (Goyal et al. 2021) trains on random, unfiltered Instagram images: at that scale some files
are always empty, truncated, in an unsupported format, or enormous. One such file must not stop
(or silently stall) a run that has been going for days, and the operator should see how many were
skipped and which. `tf.io.decode_image` raises on all of these (docs/design.md section 4), and
`Dataset.ignore_errors` drops the element without saying which or how many. So the steps that
can raise (reading the file, decoding the bytes) each run inside a one-element dataset with
`ignore_errors`, followed by a fallback element: the outer element always exists and carries a
status code, which `DecodeStats.record` counts exactly. No `tf.py_function`, no GIL; a guard
costs ~0.3 ms per image on a 2-core CPU. The functions are traced once per process (`_decode_fn`)
because the guards' nested datasets make tracing slow; keep the guarded steps small, since each
new iterator instantiates them.

Memory stays bounded for huge images: sizes are read from the header before anything is
decoded (headers.py), in training, evaluation and serving alike (`decode_or_raise`, the
`serving_bytes` signature of seer_tf/export.py):
- JPEG: the header gives the size (`tf.image.extract_jpeg_shape`); libjpeg's DCT-domain downscale
  (`ratio` 1, 2, 4 or 8) brings the decoded image under `max_pixels`; if even 1/8 is too large, a
  centered window of that 1/8 image is decoded (`tf.io.decode_and_crop_jpeg`).
- PNG, GIF, BMP, WebP (VP8, VP8L, VP8X): the header size is read from the bytes; above
  `max_decode_pixels` the file is skipped as `too_large` without decoding; otherwise it is decoded
  and, above `max_pixels`, resized down (antialiased) to fit.
- GIF: only the first frame is handed to the decoder (the file is cut after it), and that frame's
  own size is checked too. Animated WebP: more than MAX_FRAMES frames, or frames x canvas above
  `max_decode_pixels`, is `too_large`.
- Other formats TensorFlow may decode (JPEG XL) get no header check: resized after decoding.
Peak memory of one decode, measured (ru_maxrss growth, one image, TF 2.21 CPU): a 8192 x 8192
PNG (= the default max_decode_pixels) 449 MiB (uint8 image + the float32 copy the resize makes:
~7 bytes per declared pixel); a 2048 x 2048 PNG (under max_pixels) 13 MiB; a 8192 x 8192 JPEG
22 MiB (decoded at 1/4 scale); a PNG declaring 40000 x 40000 0.5 MiB (rejected on its header).
Lower `max_decode_pixels` where several images decode in parallel on a small host.

Statuses besides decoding: `skip_marker(status)` lets a listing pass on what it could not list
(`unreadable_dir`, `bad_name`) and a TFRecord reader a shard that ended early (`corrupt_shard`):
they are counted and named by DecodeStats like a bad file.

Grayscale, palette and alpha become RGB (`channels=3`; alpha is dropped, as PIL's convert("RGB")
does); 16-bit PNGs are scaled to 8 bits. EXIF orientation is not applied (neither does the
torchvision peer). TIFF, HEIC and AVIF are not supported by TensorFlow: counted as
`unsupported_format`.
"""

import tensorflow as tf

from seer_tf.data import headers

# Status codes carried by every decoded element; index = code.
STATUS_NAMES = ("ok", "unreadable", "empty", "unsupported_format", "too_large", "corrupt",
                "bad_name", "unreadable_dir", "corrupt_shard")
(OK, UNREADABLE, EMPTY, UNSUPPORTED, TOO_LARGE, CORRUPT, BAD_NAME, UNREADABLE_DIR,
 CORRUPT_SHARD) = range(len(STATUS_NAMES))

DEFAULT_MAX_PIXELS = 1 << 22  # 4.2 Mpx (2048 x 2048): 12 MB of uint8 RGB per decoded image
DEFAULT_MAX_DECODE_PIXELS = 1 << 26  # non-JPEG headers above this are not decoded at all
MAX_FRAMES = 256  # animated WebP with more ANMF chunks: too_large (GIF: first frame only)


# Signatures of what `tf.io.decode_image` reads: JPEG, PNG, GIF, BMP, JPEG XL (codestream and
# container); WebP is RIFF....WEBP. A failure on these bytes is `corrupt`, otherwise `unsupported`.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")


def _known_magic(encoded):
    return tf.reduce_any(tf.stack([headers.starts_with(encoded, m) for m in _MAGIC] +
                                  [headers.is_webp(encoded)]))


# A listing can put a status in place of a payload (a directory it could not read, a name it
# could not represent, a shard that ended early): `skip_marker(status)`. Paths never start with
# NUL, and no image format starts with these 14 bytes.
SKIP_PREFIX = b"\0seer_tf-skip:"


def skip_marker(status):
    """Payload that `decode`/`read_and_decode` turn into `status` without reading anything."""
    return SKIP_PREFIX + bytes([int(status)])


def marker_name(payload):
    """The name carried by a skip marker (marker + name), else the payload itself."""
    is_marker = headers.starts_with(payload, SKIP_PREFIX)
    rest = tf.maximum(tf.strings.length(payload) - len(SKIP_PREFIX) - 1, 0)
    name = tf.strings.substr(payload + b"\0" * 16, len(SKIP_PREFIX) + 1, rest)
    return tf.where(is_marker, name, payload)


def _marker_status(payload):
    """(is_marker bool, status int32) of a payload."""
    is_marker = headers.starts_with(payload, SKIP_PREFIX)
    code = tf.io.decode_raw(tf.strings.substr(payload + b"\0" * 16, len(SKIP_PREFIX), 1), tf.uint8)
    return is_marker, tf.cast(code[0], tf.int32)


def _fit_pixels(height, width, max_pixels):
    """Largest int32 (h, w) with about the same aspect, h * w <= max_pixels, at least 1 x 1."""
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    s = tf.minimum(tf.sqrt(tf.cast(max_pixels, tf.float64) / (h * w)), 1.0)
    return (tf.cast(tf.maximum(tf.floor(h * s), 1.0), tf.int32),
            tf.cast(tf.maximum(tf.floor(w * s), 1.0), tf.int32))


_FAILED = -1  # inside this module: a guarded step raised


def _guarded(fn, value, fallback):
    """fn(value), or `fallback` when fn raises: a one-element dataset with ignore_errors.

    Keep `fn` small: its graph is instantiated per iterator, and a large one (many conds)
    costs about a second of start-up per iterator.
    """
    attempt = tf.data.Dataset.from_tensors(value).map(fn).ignore_errors()
    fallback_ds = tf.data.Dataset.from_tensors(fallback)
    return attempt.concatenate(fallback_ds).take(1).get_single_element()


def _empty_image():
    return tf.zeros([0, 0, 3], tf.uint8)


def _decode_jpeg_capped(encoded, max_pixels):
    """libjpeg's scaled decode (output ceil(size / ratio)) with the smallest ratio that fits."""
    shape = tf.image.extract_jpeg_shape(encoded, output_type=tf.int64)
    height, width = shape[0], shape[1]
    ratios = (1, 2, 4, 8)
    scaled_h = tf.stack([-(-height // r) for r in ratios])
    scaled_w = tf.stack([-(-width // r) for r in ratios])
    fits = tf.concat([scaled_h * scaled_w <= max_pixels, [True]], axis=0)
    index = tf.minimum(tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32), len(ratios) - 1)
    sh, sw = tf.cast(scaled_h[index], tf.int32), tf.cast(scaled_w[index], tf.int32)
    ch, cw = _fit_pixels(sh, sw, max_pixels)  # a centered window only when 1/8 is still too big
    window = tf.stack([(sh - ch) // 2, (sw - cw) // 2, ch, cw])
    # INTEGER_ACCURATE is libjpeg's JDCT_ISLOW, what PIL decodes with: full-size decodes equal
    # PIL's (TF's default, JDCT_IFAST, is up to 6 levels off), and the same as eval's decoder.
    return tf.switch_case(index, [
        lambda r=r: tf.io.decode_and_crop_jpeg(encoded, window, channels=3, ratio=r,
                                               dct_method="INTEGER_ACCURATE")
        for r in ratios])


def _decode_other(encoded):
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _declared_too_large(encoded, max_decode_pixels, max_frames):
    """(too_large, payload): the header check, and the bytes to decode (a GIF's first frame).

    Header fields are read from zero-padded bytes: a short file gives a wrong size, not an
    error, and then fails in the decoder. A GIF whose first image cannot be walked gets an empty
    payload (then `corrupt`): giflib would inflate every frame of it.
    """
    h, w = headers.header_size(encoded + b"\0" * 32)
    gif = headers.is_gif(encoded)
    end, gif_ok, fh, fw = tf.cond(
        gif, lambda: headers.gif_first_frame(encoded),
        lambda: (tf.constant(0, tf.int64), tf.constant(True), tf.constant(0, tf.int64),
                 tf.constant(0, tf.int64)))
    frames = tf.cond(headers.is_webp(encoded), lambda: headers.webp_frames(encoded),
                     lambda: tf.constant(1, tf.int64))
    pixels = tf.maximum(h * w, fh * fw) * tf.cast(frames, tf.int64)
    too_large = (pixels > max_decode_pixels) | (frames > max_frames)
    first_frame = tf.strings.substr(encoded, tf.constant(0, tf.int64), end) + b";"
    payload = tf.where(gif, first_frame, encoded)
    payload = tf.where(too_large | (gif & tf.logical_not(gif_ok)), tf.constant(b""), payload)
    return too_large, payload


def _decode(encoded, max_pixels, max_decode_pixels):
    is_marker, marker = _marker_status(encoded)
    too_large, payload = _declared_too_large(encoded, max_decode_pixels, MAX_FRAMES)
    payload = tf.where(is_marker, tf.constant(b""), payload)
    is_jpeg = tf.io.is_jpeg(payload)

    def attempt(e):
        image = tf.cond(is_jpeg, lambda: _decode_jpeg_capped(e, max_pixels),
                        lambda: _decode_other(e))
        return tf.constant(OK), tf.ensure_shape(image, [None, None, 3])

    fallback = (tf.constant(_FAILED), _empty_image())
    status, image = _guarded(attempt, payload, fallback)
    height, width = tf.shape(image, tf.int64)[0], tf.shape(image, tf.int64)[1]
    th, tw = _fit_pixels(height, width, max_pixels)  # non-JPEG over the cap: resize after
    image = tf.cond(
        height * width > max_pixels,
        lambda: tf.cast(tf.round(tf.image.resize(image, [th, tw], antialias=True)), tf.uint8),
        lambda: image)
    failed = tf.where(
        too_large, TOO_LARGE,
        tf.where(tf.equal(tf.strings.length(encoded), 0), EMPTY,
                 tf.where(_known_magic(encoded), CORRUPT, UNSUPPORTED)))
    status = tf.where(is_marker, marker, tf.where(status == OK, status, failed))
    return status, tf.ensure_shape(image, [None, None, 3])


def _read_and_decode(path, max_pixels, max_decode_pixels):
    is_marker, _ = _marker_status(path)
    ok, encoded = _guarded(lambda p: (tf.constant(True), tf.io.read_file(p)),
                           tf.where(is_marker, tf.constant(b""), path),
                           (tf.constant(False), tf.constant(b"")))
    status, image = _decode(tf.where(is_marker, path, encoded), max_pixels, max_decode_pixels)
    return tf.where(ok | is_marker, status, UNREADABLE), image


# Traced once per process and called from every pipeline: tracing these graphs (the guards'
# nested datasets) costs ~1 s of Python per call site otherwise.
_SPEC = [tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)]
_decode_fn = tf.function(_decode, input_signature=_SPEC, autograph=False)
_read_and_decode_fn = tf.function(_read_and_decode, input_signature=_SPEC, autograph=False)


def decode(encoded, max_pixels=DEFAULT_MAX_PIXELS, max_decode_pixels=DEFAULT_MAX_DECODE_PIXELS):
    """Never raises: (status int32, uint8 image [h, w, 3]; [0, 0, 3] unless status == OK)."""
    return _decode_fn(encoded, tf.constant(max_pixels, tf.int64),
                      tf.constant(max_decode_pixels, tf.int64))


def read_and_decode(path, max_pixels=DEFAULT_MAX_PIXELS,
                    max_decode_pixels=DEFAULT_MAX_DECODE_PIXELS):
    """Never raises: like `decode`, reading the file first (missing/dir/no access: UNREADABLE)."""
    return _read_and_decode_fn(path, tf.constant(max_pixels, tf.int64),
                               tf.constant(max_decode_pixels, tf.int64))


def assert_decoded(status, value, what="image"):
    """`value`, or an InvalidArgumentError naming the first bad image and its status.

    `status`: a scalar or a vector (one per image of a request); the message reads
    "image could not be decoded: index 2, status too_large".
    """
    status = tf.reshape(status, [-1])
    bad = tf.not_equal(status, OK)
    first = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int32)
    name = tf.gather(tf.constant(STATUS_NAMES), tf.gather(tf.concat([status, [OK]], 0), first))
    check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)),
                                [f"{what} could not be decoded: index", first, "status", name])
    with tf.control_dependencies([check]):
        return tf.identity(value)


def decode_or_raise(encoded, max_pixels=DEFAULT_MAX_PIXELS,
                    max_decode_pixels=DEFAULT_MAX_DECODE_PIXELS):
    """The guarded decoder for evaluation and serving: uint8 [h, w, 3] or a one-line
    InvalidArgumentError ("image could not be decoded, status: too_large"); never allocates
    more than the caps allow (see the module docstring)."""
    status, image = decode(encoded, max_pixels, max_decode_pixels)
    return assert_decoded(status, image)


class DecodeStats:
    """Counts of decoded/skipped elements per status, and the first few bad names.

    Updated by `record` inside a sequential `Dataset.map` (so counts are exact: every element
    that went through the decoder is counted once, in stream order); read with `as_dict()` for
    logs and TensorBoard. Counts include elements decoded ahead by prefetching. If
    `max_consecutive_bad` files in a row fail, `record` raises instead of letting an all-bad
    infinite source spin forever.

    The state lives in hash tables, not tf.Variables: a dataset function may be built inside a
    distribution strategy's scope (`distribute_datasets_from_function`), where variables would
    become mirrored and reject scatter updates; tables are created on the host as they are.
    """

    _STREAK = len(STATUS_NAMES)  # counts-table key of the current run of bad files

    def __init__(self, keep_names=20, max_consecutive_bad=10_000):
        self.keep_names = keep_names
        self.max_consecutive_bad = max_consecutive_bad
        with tf.init_scope():
            self._counts = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, 0)
            self._names = tf.lookup.experimental.MutableHashTable(tf.int64, tf.string, "")
            self._reasons = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, 0)

    def record(self, name, status):
        """Count one element; returns `status` (with control deps on the updates)."""
        keys = tf.range(len(STATUS_NAMES) + 1, dtype=tf.int64)
        old = self._counts.lookup(keys)
        is_bad = tf.not_equal(status, OK)
        bad_before = tf.reduce_sum(old[1:self._STREAK])
        streak = tf.where(is_bad, old[self._STREAK] + 1, 0)
        new = tf.concat([old[:self._STREAK] + tf.one_hot(status, self._STREAK, dtype=tf.int64),
                         [streak]], 0)
        updates = [self._counts.insert(keys, new)]

        def remember():
            index = tf.reshape(bad_before, [1])
            return tf.group(self._names.insert(index, tf.reshape(name, [1])),
                            self._reasons.insert(index, tf.cast(tf.reshape(status, [1]),
                                                                tf.int64)))

        updates.append(tf.cond(tf.logical_and(is_bad, bad_before < self.keep_names),
                               remember, tf.no_op))
        check = tf.debugging.assert_less(
            streak, tf.constant(self.max_consecutive_bad, tf.int64),
            message="DecodeStats: too many consecutive undecodable files; is the source right?")
        with tf.control_dependencies(updates + [check]):
            return tf.identity(status)

    def reset(self):
        keys = tf.range(len(STATUS_NAMES) + 1, dtype=tf.int64)
        self._counts.insert(keys, tf.zeros_like(keys))

    def as_dict(self):
        """{'ok': n, 'unreadable': n, ..., 'bad': total, 'first_bad': [(name, status), ...]}."""
        counts = self._counts.lookup(tf.range(len(STATUS_NAMES), dtype=tf.int64)).numpy()
        out = dict(zip(STATUS_NAMES, (int(c) for c in counts)))
        out["bad"] = int(counts[1:].sum())
        shown = tf.range(min(out["bad"], self.keep_names), dtype=tf.int64)
        names, reasons = self._names.lookup(shown).numpy(), self._reasons.lookup(shown).numpy()
        out["first_bad"] = [(n.decode("utf-8", "replace"), STATUS_NAMES[int(r)])
                            for n, r in zip(names, reasons)]
        return out

    def report(self):
        """One log line: counts, then the first bad names with their reasons."""
        d = self.as_dict()
        counts = ", ".join(f"{k}={d[k]}" for k in STATUS_NAMES if d[k] or k == "ok")
        first = "; ".join(f"{n} ({s})" for n, s in d["first_bad"])
        return f"decoded images: {counts}" + (f"; first bad: {first}" if first else "")
