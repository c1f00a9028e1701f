"""What an encoded image declares before it is decoded: size, first GIF frame, animation frames.

The decoder (decode.py) checks these numbers against its pixel cap *before* any pixel buffer is
allocated, so a 200-byte PNG that declares 40000 x 40000 costs nothing (SEER's uncurated stream,
and any server that decodes what clients send, meets such files). Everything here is graph ops
(no `tf.py_function`): it runs inside tf.data without the GIL and inside a SavedModel.

- PNG (IHDR), GIF (logical screen), BMP (BITMAPINFOHEADER), WebP (VP8X canvas, VP8L, VP8 key
  frame): `header_size`.
- GIF: TensorFlow's decoder (giflib's DGifSlurp) inflates *every* frame before it keeps the
  first, so an animation of N frames costs N x width x height bytes. `gif_first_frame` walks the
  block structure up to the end of the first image (a loop over 255-byte sub-blocks: ~1 ms per
  100 KB of first frame) and the decoder is given those bytes plus the trailer, i.e. exactly one
  frame; the walk also yields the frame's own size, which may exceed the logical screen.
- Animated WebP: `webp_frames` counts the ANMF chunks (an upper bound; the decoder then caps
  frames x canvas pixels).
"""

import tensorflow as tf


def starts_with(encoded, prefix):
    return tf.equal(tf.strings.substr(encoded, 0, len(prefix)), prefix)


def is_webp(encoded):
    head = tf.strings.substr(encoded, 0, 12) + b"\0" * 12  # substr past the end would raise
    return tf.logical_and(starts_with(head, b"RIFF"),
                          tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))


def is_gif(encoded):
    return starts_with(encoded, b"GIF8")


def header_size(encoded):
    """(height, width) int64 declared by a PNG/GIF/BMP/WebP header; (0, 0) for other formats.

    Branch-free (every layout is read, one is selected): conditionals inside tf.data functions
    cost start-up time per iterator. `encoded` must be zero-padded to at least 30 bytes.
    """
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, 0, 30), tf.uint8), tf.int64)

    def le(lo, n):  # unsigned little-endian at bytes [lo, lo + n)
        return tf.reduce_sum(b[lo:lo + n] * (256 ** tf.range(n, dtype=tf.int64)))

    def be(lo, n):  # unsigned big-endian
        return tf.reduce_sum(b[lo:lo + n] * (256 ** tf.range(n - 1, -1, -1, tf.int64)))

    def signed(v):  # |int32| of an unsigned 32-bit value
        return tf.abs(tf.where(v >= 1 << 31, v - (1 << 32), v))

    vp8l = le(21, 4)
    kind = tf.strings.substr(encoded, 12, 4)
    webp = is_webp(encoded)
    sizes = [
        (starts_with(encoded, b"\x89PNG\r\n\x1a\n"), be(20, 4), be(16, 4)),  # IHDR
        (is_gif(encoded), le(8, 2), le(6, 2)),  # logical screen
        (starts_with(encoded, b"BM"), signed(le(22, 4)), signed(le(18, 4))),  # BITMAPINFOHEADER
        (webp & tf.equal(kind, b"VP8X"), le(27, 3) + 1, le(24, 3) + 1),  # canvas
        (webp & tf.equal(kind, b"VP8L"), vp8l // (1 << 14) % (1 << 14) + 1, vp8l % (1 << 14) + 1),
        (webp & tf.equal(kind, b"VP8 "), le(28, 2) % (1 << 14), le(26, 2) % (1 << 14)),
    ]
    height, width = tf.constant(0, tf.int64), tf.constant(0, tf.int64)
    for match, h, w in sizes:
        height, width = tf.where(match, h, height), tf.where(match, w, width)
    return height, width


def webp_frames(encoded):
    """Number of ANMF (animation frame) chunks in a WebP file, an upper bound; 1 if none."""
    parts = tf.strings.split(tf.reshape(encoded, [1]), sep="ANMF").row_lengths()[0]
    return tf.maximum(parts - 1, 1)


def _color_table(flags):
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, flags % 8), 0)


_BLOCK, _EXT_DATA, _IMAGE_DATA, _DONE, _BAD = range(5)


def gif_first_frame(encoded):
    """-> (end int64, ok bool, frame height, frame width) of a GIF's first image.

    `end` is the byte offset just past the first image's data: `substr(encoded, 0, end) + ";"`
    is a valid one-frame GIF. `ok` is False when the file ends (or has an unknown block) before
    the first image is complete. A state machine over blocks; each iteration moves past one
    extension/image header or one data sub-block (at most 256 bytes), so the loop is bounded by
    the file size.
    """
    b = tf.cast(tf.io.decode_raw(encoded + b"\0" * 16, tf.uint8), tf.int32)
    n = tf.size(b) - 16

    def byte(i):
        return tf.gather(b, tf.clip_by_value(i, 0, n + 15))

    def body(pos, state, h, w):
        c = byte(pos)
        lflags = byte(pos + 9)
        image_start = pos + 10 + _color_table(lflags) + 1  # descriptor, local table, LZW size
        at_block = tf.equal(state, _BLOCK)
        ends = tf.equal(c, 0)  # in data: the block terminator
        new_pos = tf.where(at_block, tf.where(tf.equal(c, 0x2C), image_start, pos + 2),
                           pos + c + 1)
        new_state = tf.where(
            at_block,
            tf.where(tf.equal(c, 0x21), _EXT_DATA, tf.where(tf.equal(c, 0x2C), _IMAGE_DATA, _BAD)),
            tf.where(ends, tf.where(tf.equal(state, _EXT_DATA), _BLOCK, _DONE), state))
        new_state = tf.where(new_pos > n, _BAD, new_state)
        is_image = at_block & tf.equal(c, 0x2C)
        h = tf.where(is_image, byte(pos + 7) + 256 * byte(pos + 8), h)
        w = tf.where(is_image, byte(pos + 5) + 256 * byte(pos + 6), w)
        return new_pos, new_state, h, w

    start = 13 + _color_table(byte(10))
    zero = tf.constant(0, tf.int32)
    pos, state, h, w = tf.while_loop(
        lambda pos, state, h, w: state < _DONE, body,
        (start, tf.where(start > n, _BAD, _BLOCK), zero, zero),
        maximum_iterations=n + 1)
    ok = tf.equal(state, _DONE)
    return (tf.cast(pos, tf.int64), ok, tf.cast(h, tf.int64), tf.cast(w, tf.int64))
