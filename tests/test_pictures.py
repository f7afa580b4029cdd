"""The run's pictures embedded in the markdown artifact: small data: URIs a browser decodes."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from flows import ui


def _decode(uri: str) -> tuple[str, bytes]:
    head, data = uri.split(",", 1)
    return head, base64.b64decode(data)


def test_large_png_and_gif_shrink_under_the_budget_and_stay_pictures(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (900, 900, 3), dtype=np.uint8)  # incompressible: must be downscaled
    Image.fromarray(noise).save(tmp_path / "big.png")
    frames = [Image.fromarray(rng.integers(0, 255, (300, 300), dtype=np.uint8)) for _ in range(40)]
    frames[0].save(tmp_path / "big.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.fromarray(rng.integers(0, 255, (400, 400), dtype=np.uint8)[:, :, None].repeat(3, 2) // 128 * 128
                    ).save(tmp_path / "fits.png")
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(tmp_path / "grid.png")

    for name, mime in (("big.png", "image/png"), ("big.gif", "image/gif")):
        assert (tmp_path / name).stat().st_size > ui.MAX_BYTES
        head, data = _decode(ui.data_uri(str(tmp_path / name)))
        assert head == f"data:{mime};base64" and len(data) <= ui.MAX_BYTES, (name, len(data))
        img = Image.open(io.BytesIO(data))
        assert img.width >= 64
        if mime == "image/gif":
            assert img.n_frames >= 4  # still an animation
    # a PNG that fits goes as it is; a tiny sample grid is enlarged without blurring
    assert _decode(ui.data_uri(str(tmp_path / "fits.png")))[1] == (tmp_path / "fits.png").read_bytes()
    grid = np.asarray(Image.open(io.BytesIO(_decode(ui.data_uri(str(tmp_path / "grid.png")))[1])))
    assert grid.shape[0] >= ui.MIN_WIDTH and set(np.unique(grid)) == {0, 255}


def test_markdown_embeds_each_picture_and_names_one_it_cannot_read(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    lines = "\n".join(ui.markdown({"grid": str(tmp_path / "a.png"), "gif": str(tmp_path / "bad.png")}))
    assert "![grid](data:image/png;base64," in lines
    assert f"`{tmp_path / 'bad.png'}` (not embedded" in lines
