"""The serving signatures a recipe declares (Recipe.serving) and the SavedModel written from them:
inputs and outputs in the user's units (uint8 pixels), the recorded normalization inside."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from components import tfrecords


def _to_model(images, norm: dict):
    """uint8 pixels (or 0..255 floats) -> the normalization preprocess recorded."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) * norm["scale"] + norm["offset"]


def _to_pixels(y, norm: dict):
    """Model images -> uint8 pixels: the one inverse tfrecords.unnormalize, rounded and clipped."""
    import tensorflow as tf

    x = tfrecords.unnormalize(tf.cast(y, tf.float32), norm)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


@dataclass(frozen=True)
class Classify:
    """images (uint8, the trained size) -> {"probabilities": softmax of its logits, "classes"}."""
    network: str

    def spec(self, nets, image_shape) -> tuple:
        import tensorflow as tf

        return (tf.TensorSpec([None, *image_shape], tf.uint8, name="images"),)

    def __call__(self, nets, norm: dict):
        import tensorflow as tf

        net = nets[self.network]

        def fn(images):
            x = tf.reshape(_to_model(images, norm), [-1, *net.input_shape[1:]])
            probs = tf.nn.softmax(tf.cast(net(x, training=False), tf.float32), axis=-1)
            return {"probabilities": probs, "classes": tf.argmax(probs, -1, output_type=tf.int32)}
        return fn


@dataclass(frozen=True)
class Generate:
    """a batch of noise vectors (float32, the generator's latent size) -> {"images": uint8}."""
    network: str

    def spec(self, nets, image_shape) -> tuple:
        import tensorflow as tf

        return (tf.TensorSpec([None, nets[self.network].input_shape[-1]], tf.float32, name="noise"),)

    def __call__(self, nets, norm: dict):
        net = nets[self.network]
        return lambda noise: {"images": _to_pixels(net(noise, training=False), norm)}


@dataclass(frozen=True)
class Translate:
    """images (uint8, the trained size) -> {"images": their translation, uint8}. Inference mode:
    moving statistics and no dropout, so one input always gives one output."""
    network: str

    def spec(self, nets, image_shape) -> tuple:
        import tensorflow as tf

        return (tf.TensorSpec([None, *image_shape], tf.uint8, name="images"),)

    def __call__(self, nets, norm: dict):
        net = nets[self.network]
        return lambda images: {"images": _to_pixels(net(_to_model(images, norm), training=False), norm)}


@dataclass(frozen=True)
class Serving:
    """A recipe's SavedModel signatures by name; "serving_default" is the one servers call."""
    signatures: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if "serving_default" not in self.signatures:
            raise ValueError("a Serving declares a serving_default signature")


def save(serving: Serving, nets: Mapping[str, Any], transform: dict, path: str) -> None:
    """Write the SavedModel of these networks and signatures to the local folder path."""
    import keras

    archive = keras.export.ExportArchive()
    norm, shape = transform["normalize"], transform["image_shape"]
    for name in sorted({s.network for s in serving.signatures.values()}):
        archive.track(nets[name])
    # serving_default first: ExportArchive makes the first endpoint the default too
    for name in sorted(serving.signatures, key=lambda n: n != "serving_default"):
        sig = serving.signatures[name]
        archive.add_endpoint(name, sig(nets, norm), input_signature=sig.spec(nets, shape))
    archive.write_out(path, verbose=False)
