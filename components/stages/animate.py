"""animate: the GIF of the sample grids, with the DCGAN tutorial's square-root frame schedule."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

from artifacts import gfile
from components.contract import Spec, Stage, StageParams, key
from components.stages import render

SPEC = Spec(output="Animation", inputs={"rendering": "render"})


@dataclass(frozen=True)
class Params(StageParams):
    frame_seconds: float = key("render.gif_frame_seconds")


def sqrt_schedule(n: int) -> list[int]:
    """Indices of kept frames: frame i is kept when round(2*sqrt(i)) exceeds the rounded value
    of the last kept one; the last frame is appended once more at the end (the tutorial)."""
    kept, last = [], -1
    for i in range(n):
        frame = round(2 * math.sqrt(i))
        if frame > last:
            last = frame
            kept.append(i)
    return kept + [n - 1] if n else []


def run(out, inputs, params: Params, rt) -> None:
    import imageio.v2 as imageio

    frames = render.frames(inputs["rendering"])
    if not frames:
        raise RuntimeError("no sample grids to animate: train.sample_every produced no snapshots")
    order = sqrt_schedule(len(frames))
    images = [imageio.imread(io.BytesIO(gfile.read_bytes(frames[i]))) for i in order]
    buf = io.BytesIO()
    # imageio's pillow GIF writer takes milliseconds per frame
    imageio.mimsave(buf, images, format="GIF", duration=params.frame_seconds * 1000, loop=0)
    gfile.write_bytes(out.file("training.gif"), buf.getvalue())
    gfile.write_json(out.file("frames.json"), [frames[i].rsplit("/", 1)[-1] for i in order])
    out.metadata.update(frames=len(order))


def gif(artifact) -> str:
    """The animation's path."""
    return artifact.path("training.gif")


STAGE = Stage("animate", SPEC, Params, run)
