"""Every image mode keeps its values (16-bit scaled, not clipped; palette, grayscale with alpha,
CMYK, 1-bit, EXIF-rotated converted) or is refused in one line; validate warns of a split whose
pixels collapse to a few values."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from artifacts.errors import UserError
from components.tfrecords import decode_rgb

MAX = 10 ** 8


def _enc(im, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped():
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    out = decode_rgb(_enc(Image.fromarray(ramp)), "a.png", MAX)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert len(np.unique(out)) == 256 and out.min() == 0 and out.max() == 255
    expect = np.rint(ramp / 257).astype(np.uint8)
    assert np.abs(out[..., 0].astype(int) - expect).max() <= 1
    assert np.all(np.diff(out[..., 0].ravel().astype(int)) >= 0)  # the ramp stays a ramp


def test_palette_alpha_cmyk_and_1_bit_keep_their_values():
    gray = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    rgb = np.stack([gray, 255 - gray, gray // 2], -1)
    pal = Image.fromarray(rgb).quantize(256)
    assert np.array_equal(decode_rgb(_enc(pal), "p.png", MAX), np.asarray(pal.convert("RGB")))
    la = Image.fromarray(np.stack([gray, np.full_like(gray, 7)], -1), "LA")
    assert np.array_equal(decode_rgb(_enc(la), "la.png", MAX)[..., 1], gray)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red
    assert np.abs(decode_rgb(_enc(cmyk, "JPEG", quality=100), "c.jpg", MAX)[0, 0].astype(int)
                  - [255, 0, 0]).max() <= 2
    one = Image.fromarray(gray > 127)
    assert set(np.unique(decode_rgb(_enc(one), "1.png", MAX))) == {0, 255}


def test_an_exif_orientation_is_applied():
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # 40 wide, 20 high
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert decode_rgb(_enc(im, "JPEG", exif=exif), "r.jpg", MAX).shape == (40, 20, 3)


def test_a_floating_point_image_is_refused_in_one_line():
    im = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "F")
    with pytest.raises(UserError) as e:
        decode_rgb(_enc(im, "TIFF"), "f.tif", MAX)
    assert "floating-point" in e.value.line() and "\n" not in e.value.line()


def test_validate_warns_of_pixels_that_collapse_to_a_few_values():
    from components.stages import validate
    from flows.registry import get

    p = validate.Params.from_config(get("pix2pix").config(), get("pix2pix").recipe)

    def stats(hist):
        return {"count": 10, "undecodable": [], "unlabeled": 0, "px_hist": np.asarray(hist, np.int64),
                "shapes": {"256x256x3": 10}}

    clipped = np.zeros(256, np.int64)
    clipped[[0, 255]] = [100, 99_000]
    found = [a for a in validate.anomalies({"train": stats(clipped)}, p, {"train": []}) if a["kind"] == "collapsed_pixels"]
    assert len(found) == 1 and found[0]["severity"] == "warning" and "2 value(s)" in found[0]["message"], found
    assert not [a for a in validate.anomalies({"train": stats(np.full(256, 500))}, p, {"train": []})
                if a["kind"] == "collapsed_pixels"]
