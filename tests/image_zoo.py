"""Generated image files, good and bad, for the data tests (PIL writes them; nothing is stored).

`make_zoo(dir)` writes the kinds of files an uncurated crawl contains and returns what a
correct reader must do with each: the names it must yield (with the expected decoded size) and
the number it must skip per reason (the status names of seer_tf.data.decode).
"""

import io
import os

import numpy as np
from PIL import Image

# Small caps so that "huge" images stay small on disk.
MAX_PIXELS = 64 * 64
MAX_DECODE_PIXELS = 150 * 150


def solid(color, size=(24, 32), mode="RGB"):
    """A solid image of `color` (RGB tuple), `size` = (height, width)."""
    return Image.new(mode, (size[1], size[0]), color)


def noise(size, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    shape = (size[0], size[1], channels) if channels > 1 else size
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _save(root, name, image, **kwargs):
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)
    return path


def _write(root, name, data):
    path = os.path.join(root, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_zoo(root):
    """Write the zoo under root; returns (good: {relpath: (h, w)}, bad: {reason: count})."""
    good = {}

    def ok(name, image, shape=None, **kwargs):
        _save(root, name, image, **kwargs)
        good[name] = shape or (image.size[1], image.size[0])

    ok("rgb.jpg", noise((30, 40), 1), quality=90)
    ok("progressive.jpg", noise((30, 40), 2), quality=90, progressive=True)
    ok("cmyk.jpg", noise((30, 40), 3).convert("CMYK"))
    ok("gray.jpg", noise((30, 40), 4, channels=1))
    ok("rgb.png", noise((20, 20), 5))
    ok("sixteen_bit.png", Image.fromarray(
        np.random.default_rng(6).integers(0, 65535, (20, 24), dtype=np.uint16)))
    ok("palette.png", noise((20, 20), 7).convert("P"))
    ok("rgba.png", noise((20, 20), 8, channels=4))
    ok("one_pixel.png", solid((10, 200, 30), (1, 1)))
    frames = [solid((255, 0, 0), (16, 16)), solid((0, 0, 255), (16, 16))]
    ok("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100)
    ok("image.bmp", noise((12, 14), 9))
    ok("image.webp", noise((20, 22), 10), lossless=True)
    ok("PNG_NAMED.JPG", noise((10, 12), 11), format="PNG")  # content wins over the name
    ok("x.jpg/inside.png", noise((8, 8), 12))  # a directory named like an image is walked
    # Over the pixel cap: JPEG by DCT downscale (1/8 -> 50 x 38), then a 64 x 64 center window.
    ok("huge.jpg", noise((400, 300), 13), (50, 38), quality=80)
    ok("huger.jpg", noise((800, 800), 14), (64, 64), quality=50)
    ok("big.png", noise((100, 100), 15), (64, 64))  # decoded, then resized to the cap
    ok("nested/deeper/rgb.jpg", noise((16, 16), 16))

    bad = {"unreadable": 0, "empty": 0, "unsupported_format": 0, "too_large": 0, "corrupt": 0}

    def fail(reason):
        bad[reason] += 1

    _write(root, "zero.jpg", b""); fail("empty")
    data = io.BytesIO(); noise((64, 64), 20).save(data, "JPEG")
    _write(root, "truncated.jpg", data.getvalue()[: len(data.getvalue()) // 2]); fail("corrupt")
    data = io.BytesIO(); noise((64, 64), 21).save(data, "PNG")
    _write(root, "truncated.png", data.getvalue()[: len(data.getvalue()) // 2]); fail("corrupt")
    png = bytearray(data.getvalue())
    png[png.index(b"IDAT") + 10] ^= 0xFF  # damaged compressed data (CRC mismatch)
    _write(root, "bad_crc.png", bytes(png)); fail("corrupt")
    _write(root, "header_only.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF")
    fail("corrupt")
    _write(root, "random.jpg", b"\x01" + bytes(np.random.default_rng(22).integers(
        0, 256, 500, dtype=np.uint8)))
    fail("unsupported_format")
    _write(root, "text.png", b"this is not an image\n"); fail("unsupported_format")
    _save(root, "scan.tif", noise((20, 20), 23)); fail("unsupported_format")
    os.symlink(os.path.join(root, "missing-target.jpg"), os.path.join(root, "dangling.jpg"))
    fail("unreadable")
    _save(root, "too_large.png", noise((200, 200), 24)); fail("too_large")
    _write(root, "README.txt", b"not listed: not an image extension\n")
    return good, bad
