"""Training callbacks: the paper's one-warning-shot pruning (Sec. 3.6)."""

import keras
import numpy as np
import tensorflow as tf


class _KeepPruned(keras.constraints.Constraint):
    """The variable's own constraint, then zero where `mask` is 0. The
    optimizer applies constraints after every update inside the train step,
    so a pruned weight stays exactly zero even where Adam's momentum or an
    unmasked gradient would move it."""

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return w * tf.cast(self.mask, w.dtype)


class WeightPruning(keras.callbacks.Callback):
    """One-warning-shot pruning: at the end of each epoch every weight with
    |w| < epsilon is checked; one that was also below epsilon at the previous
    check is set to zero and stays zero from then on (its updates are masked).
    Other weights are untouched.

    Args:
      epsilon: the magnitude threshold (> 0).
      weights: the variables to prune; by default every trainable variable of
        the model named "kernel" (the filters of convolution and dense layers).

    After each check `nonzero_weights` (and `logs["nonzero_weights"]`) holds
    the number of non-zero weights left among them.
    """

    def __init__(self, epsilon, weights=None):
        super().__init__()
        try:
            self.epsilon = float(epsilon)
        except (TypeError, ValueError):
            raise TypeError(f"epsilon must be a number, got {epsilon!r}") from None
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self._weights = None if weights is None else list(weights)
        self._masks = {}     # id(variable) -> tf.Variable of 0/1, 1 = kept
        self._warned = {}    # id(variable) -> bool array: small at the last check
        self.nonzero_weights = None

    def _watched(self):
        if self._weights is not None:
            return self._weights
        if self.model is None:
            return []
        return [v for v in self.model.trainable_weights
                if v.name.split("/")[-1].split(":")[0] == "kernel"]

    def set_model(self, model):
        """Keras calls it under `fit`; call it yourself in a custom training
        loop before the first (traced) training step: it puts the pruning
        masks on the model's weights, so that an `optimizer.apply_gradients`
        step keeps pruned weights at zero."""
        super().set_model(model)
        self._install()

    def on_train_begin(self, logs=None):
        if self._install() and self.model.train_function is not None:
            # A train step traced before knows nothing of the new constraints.
            self.model.make_train_function(force=True)

    def _install(self):
        """Puts a mask constraint on every watched weight that has none yet;
        True if it installed any (weights of an unbuilt model come later)."""
        installed = False
        for v in self._watched():
            if id(v) in self._masks:
                continue
            mask = tf.Variable(tf.ones(v.shape, v.dtype), trainable=False)
            self._masks[id(v)] = mask
            self._warned[id(v)] = np.zeros(v.shape, bool)
            v.constraint = _KeepPruned(mask, v.constraint)
            installed = True
        return installed

    def on_epoch_end(self, epoch, logs=None):
        if self.model is None and self._weights is None:
            raise ValueError("WeightPruning: call set_model(model) before "
                             "on_epoch_end (Keras does it under fit)")
        self._install()
        nonzero = 0
        for v in self._watched():
            mask = self._masks[id(v)]
            w = v.numpy()
            small = np.abs(w) < self.epsilon
            prune = small & self._warned[id(v)]
            self._warned[id(v)] = small & ~prune
            if prune.any():
                kept = mask.numpy() * ~prune
                mask.assign(kept)
                v.assign(w * kept)
            nonzero += int(np.count_nonzero(w * mask.numpy()))
        self.nonzero_weights = nonzero
        if logs is not None:
            logs["nonzero_weights"] = nonzero
