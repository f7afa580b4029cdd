"""Issue 7 reference: the Keras guide's own MLP loop on the offline MNIST files, raw and scaled
pixels, three seeds, test accuracy. Usage: classifier_accuracy.py [IDX_DIR] [EPOCHS] [HOLDOUT]:
HOLDOUT training digits (the last ones, as the guide does; default 10,000) are held out for the
per-epoch validation, 0 trains on all of them. Compare with `tapeline run mnist-classifier`."""
from __future__ import annotations

import gzip
import os
import sys

import numpy as np

from common import SHARED
import seeds


def load(d: str, prefix: str):
    x = np.frombuffer(gzip.decompress(open(f"{d}/{prefix}-images-idx3-ubyte.gz", "rb").read()), np.uint8, offset=16)
    y = np.frombuffer(gzip.decompress(open(f"{d}/{prefix}-labels-idx1-ubyte.gz", "rb").read()), np.uint8, offset=8)
    return x.reshape(-1, 784).astype("float32"), y.astype("int64")


def main(argv: list[str]) -> int:
    import tensorflow as tf

    d = argv[0] if argv else os.path.join(SHARED, "mnist")
    epochs = int(argv[1]) if len(argv) > 1 else 3
    hold = int(argv[2]) if len(argv) > 2 else 10000
    x, y = load(d, "train")
    xt, yt = load(d, "t10k")
    for name, scale in (("raw pixels", 1.0), ("scaled to [0,1]", 1 / 255.0)):
        accs = []
        for seed in (0, 1, 2):
            tf.keras.utils.set_random_seed(seed)
            xs, xts = x * scale, xt * scale
            n = len(x) - hold
            xv, yv = (xs[n:], y[n:]) if hold else (xts, yt)
            _, secs, nets = seeds.classifier(xs[:n], y[:n], xv, yv, epochs=epochs)
            acc = float((nets["classifier"].predict(xts, verbose=0).argmax(1) == yt).mean())
            accs.append(acc)
            print(f"guide loop, {name}, seed {seed}: {n} train digits, {epochs} epochs, "
                  f"val {['%.4f' % v for v in nets['val_accuracy']]}, test accuracy {acc:.4f} ({secs:.1f} s)")
        print(f"guide loop, {name}: mean test accuracy {np.mean(accs):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
