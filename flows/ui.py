"""What tapeline shows in the Prefect UI: a run's pictures as small data: URIs (a browser on the UI
cannot open the root's paths), and `tapeline compare` as a table artifact with its PNG."""
from __future__ import annotations

import base64
import io
import re

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from artifacts import gfile

# per picture, before base64; a run's artifact stays a few hundred KB with four of them
MAX_BYTES = 90_000
# a 4x4 grid of 28-pixel samples is 112 pixels wide: enlarged (nearest neighbour) to be seen
MIN_WIDTH = 320


def _enlarge(img):
    factor = -(-MIN_WIDTH // max(img.width, 1))
    return img if factor <= 1 else img.resize((img.width * factor, img.height * factor), resample=0)


def _png(img, max_bytes: int) -> bytes:
    while True:
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or min(img.size) < 64:
            return buf.getvalue()
        img = img.resize((max(1, img.width * 3 // 4), max(1, img.height * 3 // 4)))


def _gif(img, max_bytes: int) -> bytes:
    """An animation downscaled to half, then thinned to every k-th frame, then downscaled further,
    until it fits (a last resort that still does not fit is returned as it is)."""
    from PIL import ImageSequence

    frames = [_enlarge(f.convert("RGB")) for f in ImageSequence.Iterator(img)]
    duration = img.info.get("duration", 100)
    scale, step = 1.0, 1
    while True:
        picked = frames[::step] + ([frames[-1]] if (len(frames) - 1) % step else [])
        size = (max(1, int(frames[0].width * scale)), max(1, int(frames[0].height * scale)))
        small = [f.resize(size) for f in picked]
        buf = io.BytesIO()
        small[0].save(buf, format="GIF", save_all=True, append_images=small[1:], loop=0,
                      duration=min(duration * step, 60_000), optimize=True)
        if buf.tell() <= max_bytes:
            return buf.getvalue()
        if scale > 0.5:
            scale *= 0.75
        elif len(picked) > 8:
            step *= 2
        elif min(size) > 48:
            scale *= 0.75
        else:
            return buf.getvalue()


def data_uri(path: str, max_bytes: int = MAX_BYTES) -> str:
    """data:image/...;base64 of the picture at path (any root gfile reads), shrunk to max_bytes."""
    from PIL import Image

    raw = gfile.read_bytes(path)
    img = Image.open(io.BytesIO(raw))
    small = img.width < MIN_WIDTH
    if img.format == "GIF" and getattr(img, "n_frames", 1) > 1:
        data, mime = (raw if len(raw) <= max_bytes and not small else _gif(img, max_bytes)), "image/gif"
    else:
        keep = len(raw) <= max_bytes and img.format == "PNG" and not small
        data, mime = (raw if keep else _png(_enlarge(img), max_bytes)), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def markdown(pictures: dict[str, str]) -> list[str]:
    """Markdown lines embedding each picture; one that cannot be read is named with its path instead."""
    lines = []
    for name, path in pictures.items():
        try:
            lines += [f"**{name}**", "", f"![{name}]({data_uri(path)})", ""]
        except (OSError, ValueError) as e:
            lines += [f"**{name}**: `{path}` (not embedded: {type(e).__name__})", ""]
    return lines


# ---- tapeline compare
# the PNG embedded in the markdown artifact: a few runs' grids and the table stay readable
MAX_PNG_BYTES = 400_000


def key(pipeline: str) -> str:
    """The artifacts' key: Prefect takes lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{pipeline}-compare".lower())


@flow(name="compare", flow_run_name="compare-{pipeline}", validate_parameters=False)
def publish(pipeline: str, table: list[dict], png: str) -> None:
    """A flow run that holds the comparison: its table artifact (rows: created, the config keys
    that differ, the metrics, the pictures) and a markdown artifact showing the PNG, both under
    the pipeline's compare key (Prefect deprecates artifacts made outside a run)."""
    runs = [c for c in table[0] if c]
    create_table_artifact(table, key=key(pipeline),
                          description=f"tapeline compare {pipeline}: {', '.join(runs)} (PNG: {png})")
    try:
        picture = f"![comparison]({data_uri(png, MAX_PNG_BYTES)})"
    except (OSError, ValueError) as e:
        picture = f"`{png}` (not embedded: {type(e).__name__})"
    create_markdown_artifact(f"# {pipeline}: runs side by side\n\n{picture}\n\n`{png}`\n",
                             key=f"{key(pipeline)}-png", description=f"tapeline compare {pipeline}: the PNG")
