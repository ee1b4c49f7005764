"""MinkowskiEngine weights for so.models: `load_minkowski_weights`.

A MinkowskiEngine (ME) 0.5 `state_dict`, as numpy arrays under ME's names
(no torch needed: e.g. `{k: v.numpy() for k, v in model.state_dict().items()}`
saved with np.savez), loads into the matching `so.models.MinkUNet` or
`so.models.ResNet`, which then gives ME's outputs. The layouts differ only
in how they are written down (and ResNet's strided windows, see
`load_minkowski_weights`):

- ME's kernels are [K, Cin, Cout] with the first spatial axis fastest in K
  (k = i_x + k * i_y + k^2 * i_z); ours are Keras' [kx, ky, kz, Cin, Cout].
  The windows are the same for MinkUNet's kernels (odd sizes at stride 1:
  centred; 2 at stride 2: {0, 1}).
- ME's transposed kernels are [K, Cin(coarse), Cout]; ours are Keras'
  [kx, ky, kz, Cout, Cin].
- 1x1 convolutions are [Cin, Cout] in ME; the final bias is [1, Cout].
- MinkowskiBatchNorm is torch's BatchNorm1d under `.bn`: weight, bias,
  running_mean, running_var are Keras' gamma, beta, moving_mean,
  moving_variance (num_batches_tracked is ignored).
"""

import numpy as np

from sparse_ops.tensor import SparseTensor


def _reorder_kernel(kernel, size, dimension):
    """ME [K, A, B] (x fastest) -> [size] * D + [A, B] (Keras order)."""
    kernel = np.asarray(kernel)
    if kernel.ndim == 2:  # ME's 1x1 convolution at stride 1
        kernel = kernel[None]
    shape = [size] * dimension
    if kernel.shape[0] != int(np.prod(shape)):
        raise ValueError(f"a kernel of size {size} in {dimension}D has {np.prod(shape)} "
                         f"offsets, got shape {kernel.shape}")
    grid = kernel.reshape(shape[::-1] + list(kernel.shape[1:]))  # (i_z, i_y, i_x, ...)
    axes = list(range(dimension))[::-1] + [dimension, dimension + 1]
    return grid.transpose(axes)


class _Loader:
    """Assigns ME arrays to variables, checking every name and shape."""

    def __init__(self, state_dict):
        self.arrays = {k: np.asarray(v) for k, v in dict(state_dict).items()}
        self.used = set()

    def take(self, name):
        if name not in self.arrays:
            raise ValueError(f"the MinkowskiEngine state_dict has no {name!r}; this model "
                             "does not match the checkpoint's architecture")
        self.used.add(name)
        return self.arrays[name]

    @staticmethod
    def assign(variable, value, name):
        value = np.asarray(value)
        if tuple(variable.shape) != value.shape:
            raise ValueError(f"{name}: the checkpoint's shape {value.shape} does not fit "
                             f"{variable.path} of shape {tuple(variable.shape)}")
        variable.assign(value.astype(variable.dtype))

    def conv(self, layer, name, dimension, transposed=False):
        size = layer.kernel.shape[0]
        kernel = _reorder_kernel(self.take(f"{name}.kernel"), size, dimension)
        if transposed:
            kernel = np.swapaxes(kernel, -1, -2)
        self.assign(layer.kernel, kernel, f"{name}.kernel")
        if layer.use_bias:
            self.assign(layer.bias, self.take(f"{name}.bias").reshape(-1), f"{name}.bias")

    def batch_norm(self, layer, name):
        bn = layer.bn
        for ours, theirs in ((bn.gamma, "weight"), (bn.beta, "bias"),
                             (bn.moving_mean, "running_mean"),
                             (bn.moving_variance, "running_var")):
            self.assign(ours, self.take(f"{name}.bn.{theirs}"), f"{name}.bn.{theirs}")

    def instance_norm(self, layer, name):
        self.assign(layer.gamma, self.take(f"{name}.weight").reshape(-1), f"{name}.weight")
        self.assign(layer.beta, self.take(f"{name}.bias").reshape(-1), f"{name}.bias")

    def block(self, block, name, dimension):
        """ME's BasicBlock `name` (conv1, norm1, conv2, norm2, downsample)."""
        conv1, norm1, conv2, norm2 = block.main
        self.conv(conv1, f"{name}.conv1", dimension)
        self.batch_norm(norm1, f"{name}.norm1")
        self.conv(conv2, f"{name}.conv2", dimension)
        self.batch_norm(norm2, f"{name}.norm2")
        if block.projection is not None:
            self.conv(block.projection[0], f"{name}.downsample.0", dimension)
            self.batch_norm(block.projection[1], f"{name}.downsample.1")

    def finish(self):
        unused = sorted(k for k in set(self.arrays) - self.used
                        if not k.endswith("num_batches_tracked"))
        if unused:
            raise ValueError(f"the MinkowskiEngine state_dict has entries this model does "
                             f"not use: {unused[:8]}{' ...' if len(unused) > 8 else ''}")


def _build(model, loader, first_kernel, dimension):
    if not model.built:
        channels = loader.arrays[first_kernel].shape[-2]
        model(SparseTensor(np.zeros((1, channels), np.float32),
                           np.zeros((1, dimension + 1), np.int32)))


def _load_minkunet(model, loader, dimension):
    from sparse_ops import models  # pylint: disable=import-outside-toplevel

    _build(model, loader, "conv0p1s1.kernel", dimension)
    loader.conv(model.stem[0], "conv0p1s1", dimension)
    loader.batch_norm(model.stem[1], "bn0")
    for i, (conv, norm) in enumerate(zip(model.down[0::2], model.down[1::2])):
        loader.conv(conv, f"conv{i + 1}p{2 ** i}s2", dimension)
        loader.batch_norm(norm, f"bn{i + 1}")
    for i, (conv, norm) in enumerate(zip(model.up[0::2], model.up[1::2])):
        loader.conv(conv, f"convtr{i + 4}p{2 ** (4 - i)}s2", dimension, transposed=True)
        loader.batch_norm(norm, f"bntr{i + 4}")
    for stage, blocks in enumerate(model.encoder_stages + model.decoder_stages):
        for j, block in enumerate(blocks):
            if not isinstance(block, models.BasicBlock):
                raise TypeError(f"block{stage + 1}.{j} is not a BasicBlock")
            loader.block(block, f"block{stage + 1}.{j}", dimension)
    loader.conv(model.final, "final", dimension)


def _load_resnet(model, loader, dimension):
    from sparse_ops import models  # pylint: disable=import-outside-toplevel

    if not model.minkowski_windows:
        raise ValueError("a MinkowskiEngine ResNet reads centred windows in its strided "
                         "3x3x3 convolutions: build the ResNet with minkowski_windows=True "
                         "(and instance_norm_epsilon=1e-8, ME's)")
    _build(model, loader, "conv1.0.kernel", dimension)
    loader.conv(model.stem[0], "conv1.0", dimension)
    loader.instance_norm(model.stem[1], "conv1.1")
    for stage, blocks in enumerate(model.stages):
        for j, block in enumerate(blocks):
            if not isinstance(block, models.BasicBlock):
                raise TypeError(f"layer{stage + 1}.{j} is not a BasicBlock")
            loader.block(block, f"layer{stage + 1}.{j}", dimension)
    loader.conv(model.head[1], "conv5.1", dimension)
    loader.instance_norm(model.head[2], "conv5.2")
    # torch's Linear weight is [Cout, Cin].
    loader.assign(model.final.kernel, loader.take("final.linear.weight").T,
                  "final.linear.weight")
    loader.assign(model.final.bias, loader.take("final.linear.bias"), "final.linear.bias")


def load_minkowski_weights(model, state_dict, dimension=3):
    """Loads a MinkowskiEngine `state_dict` into `model`.

    Args:
      model: a `so.models.MinkUNet` (MinkUNet14/18/34 and their variants) or
        `so.models.ResNet` (ResNet14/18/34; built with
        `minkowski_windows=True, instance_norm_epsilon=1e-8`, ME's strided
        windows and epsilon) with basic blocks and the checkpoint's depths,
        planes, init_dim and output channels. Built here from the
        checkpoint's input channels if it is not built yet.
      state_dict: a mapping from ME's parameter names to numpy arrays (or
        tensors), or the path of an `.npz` holding them.
      dimension: the spatial dimension D of the checkpoint (ME's D).
    Returns:
      `model`, whose eval-mode outputs (`training=False`) are ME's.
    Raises:
      ValueError: a missing, unused or misshapen entry, naming it, or a
        ResNet without ME's windows; TypeError for another model.
    """
    from sparse_ops import models  # pylint: disable=import-outside-toplevel

    if isinstance(state_dict, str):
        with np.load(state_dict) as data:
            state_dict = {k: data[k] for k in data.files}
    loader = _Loader(state_dict)
    if isinstance(model, models.MinkUNet) and model.block == "basic":
        _load_minkunet(model, loader, dimension)
    elif isinstance(model, models.ResNet) and model.block == "basic":
        _load_resnet(model, loader, dimension)
    else:
        raise TypeError("load_minkowski_weights maps so.models.MinkUNet and ResNet with "
                        f"basic blocks, got {type(model).__name__}")
    loader.finish()
    return model
