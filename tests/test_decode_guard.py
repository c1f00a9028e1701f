"""The guarded decoder bounds memory before decoding: pixel bombs, GIF frames, serving requests.

A PNG of a few hundred bytes can declare 40000 x 40000 pixels (4.8 GB of RGB); a server or a
training run that decodes it first and checks later is dead. The header is read first
(data/headers.py), for the training stream and for the serving signature alike.
"""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import tensorflow as tf
from PIL import Image

from seer_tf.data import decode, headers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png_bomb(height=40000, width=40000):
    """A valid PNG header declaring height x width RGB, with a few rows of real data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (3 * width + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) +
            chunk(b"IEND", b""))


def _gif(frames, size=(16, 16)):
    images = [Image.new("RGB", size, color) for color in frames]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=50)
    return buf.getvalue()


def test_pixel_bomb_is_too_large_without_decoding():
    bomb = png_bomb()
    assert len(bomb) < 2000
    h, w = headers.header_size(tf.constant(bomb + b"\0" * 32))
    assert (int(h), int(w)) == (40000, 40000)
    status, image = decode.decode(tf.constant(bomb))
    assert int(status) == decode.TOO_LARGE and image.shape == (0, 0, 3)


def test_gif_first_frame_only_and_its_own_size_is_checked():
    data = _gif([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    end, ok, fh, fw = headers.gif_first_frame(tf.constant(data))
    assert bool(ok) and (int(fh), int(fw)) == (16, 16)
    one = data[:int(end)] + b";"
    assert tf.io.decode_gif(one).shape[0] == 1  # exactly one frame is left
    status, image = decode.decode(tf.constant(data))
    assert int(status) == decode.OK and tuple(image.numpy()[0, 0]) == (255, 0, 0)
    # A first frame larger than the cap is too_large even under a small logical screen.
    big = bytearray(_gif([(1, 2, 3)], (300, 200)))
    big[6:10] = struct.pack("<HH", 8, 8)  # the logical screen now claims 8 x 8
    status, _ = decode.decode(tf.constant(bytes(big)), 64 * 64, 100 * 100)
    assert int(status) == decode.TOO_LARGE
    # Cut inside the first frame: corrupt, and nothing is decoded.
    status, _ = decode.decode(tf.constant(data[:int(end) - 5]))
    assert int(status) == decode.CORRUPT


def test_decode_or_raise_names_the_status():
    import pytest

    with pytest.raises(tf.errors.InvalidArgumentError, match="too_large"):
        decode.decode_or_raise(tf.constant(png_bomb()))
    ok = decode.decode_or_raise(tf.io.encode_png(tf.zeros([4, 5, 3], tf.uint8)))
    assert ok.shape == (4, 5, 3)


_SERVE = r"""
import json, resource, sys
import numpy as np, tensorflow as tf
sys.path.insert(0, sys.argv[1])
from test_decode_guard import png_bomb
from seer_tf import export
from seer_tf.models.regnet import RegNet

tf.keras.utils.set_random_seed(0)
module = export.ServingModule(RegNet.from_preset("regnety_tiny"), resize=40, crop=32)
good = tf.io.encode_png(tf.cast(tf.random.uniform([50, 60, 3], 0, 255), tf.uint8))
module.serving_bytes(tf.stack([good, good]))  # traced and warm
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # MiB
before = rss()
try:
    module.serving_bytes(tf.stack([good, tf.constant(png_bomb())]))
    error = ""
except tf.errors.InvalidArgumentError as e:
    error = e.message
grown = rss() - before
after = module.serving_bytes(tf.stack([good]))["pooled"].numpy()
print(json.dumps({"error": error, "grown_mib": grown, "finite": bool(np.isfinite(after).all()),
                  "shape": list(after.shape)}))
"""


def test_serving_rejects_a_pixel_bomb_per_request_without_allocating():
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", _SERVE, os.path.dirname(__file__)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "could not be decoded: index" in out["error"] and "too_large" in out["error"]
    assert "[1]" in out["error"] or " 1 " in out["error"]  # the second image of the request
    assert out["grown_mib"] < 200, out
    assert out["finite"] and out["shape"][0] == 1


def test_an_over_cap_png_is_resized_and_memory_stays_near_the_stated_peak():
    """The docstring's peak-per-image figure for a PNG at max_decode_pixels: decoded bytes, the
    float32 resize input and output (here with small caps so that the test is fast)."""
    rng = np.random.default_rng(0)
    png = tf.io.encode_png(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    status, image = decode.decode(png, max_pixels=100 * 100, max_decode_pixels=300 * 400)
    assert int(status) == decode.OK and image.shape[0] * image.shape[1] <= 100 * 100
    status, _ = decode.decode(png, max_pixels=100 * 100, max_decode_pixels=300 * 399)
    assert int(status) == decode.TOO_LARGE
