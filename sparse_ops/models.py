"""Building blocks and networks of MinkowskiEngine's examples, as Keras layers.

- `BasicBlock`, `Bottleneck`: the residual blocks of ME's
  `modules/resnet_block.py` (conv-BN-ReLU; identity shortcut, or a 1x1
  (strided) convolution + BN when the stride or the width changes).
- `MinkUNet` and `MinkUNet14/18/34` (ME's `examples/minkunet.py`): a U-Net
  of residual stages; encoder stride-2 convolutions, decoder transposed
  convolutions onto the skip connection's sites + `Concat`. Output sites =
  input sites.
- `ResNet` and `ResNet14/18/34/50` (ME's `examples/resnet.py`): a sparse
  classifier ending in global max pooling and a dense layer, output [B, classes].

Everything is a Keras layer: use it in a functional model (its input a
`SparseTensor`'s fields or a sparse `keras.Input`), inside a subclassed
model, or call it eagerly. Sublayers are built from the input's channel
count, so `get_config` holds only the constructor arguments and `.keras`
files reload. Conventions follow ME: convolutions without bias (except the
last), BatchNorm momentum 0.1 in PyTorch's convention (0.9 in Keras'),
epsilon 1e-5, Kaiming-normal (fan-out) kernels. `bn_synchronized=True`
makes every BatchNorm synchronized across the replicas of a
`tf.distribute` strategy.
"""

import keras

from sparse_ops import layers as so_layers
from sparse_ops.layers.base import SparseLayer, register, sparse_spec


def _kaiming_fan_out():
    """ME's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _fields_shape(channels, dimension):
    """The build() shape of a SparseTensor with `channels` feature channels."""
    return ((None, channels), (None, dimension + 1), (dimension,))


def _build(layer, channels, dimension):
    """Builds a sublayer for `channels` input channels; returns its output
    channel count."""
    layer.build(_fields_shape(channels, dimension))
    return layer.compute_output_channels(channels)


class _NetworkLayer(SparseLayer):
    """Shared options of the blocks and networks: BatchNorm and initializer.
    `bn_synchronized=True`: every BatchNorm takes its statistics over all
    replicas of a `tf.distribute` strategy (see `layers.BatchNorm`).
    `minkowski_windows=True`: convolutions use the "minkowski" region, whose
    odd windows stay centred at every stride as MinkowskiEngine's (TF-SAME
    starts a strided window at the output site); needed to run ME
    checkpoints of networks with strided odd kernels (ResNet)."""

    def __init__(self, bn_momentum=0.9, bn_epsilon=1e-5, kernel_initializer=None,
                 bn_synchronized=False, minkowski_windows=False, **kwargs):
        super().__init__(**kwargs)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.bn_synchronized = bool(bn_synchronized)
        self.minkowski_windows = bool(minkowski_windows)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer if kernel_initializer is not None
            else _kaiming_fan_out())

    def conv(self, filters, kernel_size, strides=1, dilation_rate=1, use_bias=False,
             transpose=False):
        """A (transposed) convolution with this layer's kernel initializer
        (a fresh instance each, so that no two kernels start equal)."""
        cls = so_layers.ConvTranspose if transpose else so_layers.Conv
        region = "minkowski" if self.minkowski_windows else "hypercube"
        return cls(filters, kernel_size, strides=strides, dilation_rate=dilation_rate,
                   use_bias=use_bias, region=region,
                   kernel_initializer=keras.initializers.serialize(
                       self.kernel_initializer),
                   dtype=self.dtype_policy)

    def norm(self):
        return so_layers.BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                   synchronized=self.bn_synchronized, dtype=self.dtype_policy)

    def get_config(self):
        config = super().get_config()
        config.update({
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "bn_synchronized": self.bn_synchronized,
            "minkowski_windows": self.minkowski_windows,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer),
        })
        return config


# -- residual blocks -------------------------------------------------------------

class _ResidualBlock(_NetworkLayer):
    expansion = 1

    def __init__(self, filters, strides=1, dilation_rate=1, **kwargs):
        super().__init__(**kwargs)
        if int(filters) < 1:
            raise ValueError(f"filters must be a positive int, got {filters!r}")
        if int(strides) < 1 or int(dilation_rate) < 1:
            raise ValueError(f"strides and dilation_rate must be >= 1, got "
                             f"{strides!r} and {dilation_rate!r}")
        self.filters = int(filters)
        self.strides = int(strides)
        self.dilation_rate = int(dilation_rate)
        self.main = self.main_path()
        self.projection = None  # made in build() once the input width is known

    @property
    def output_channels(self):
        return self.filters * self.expansion

    def compute_output_channels(self, input_channels):
        return self.output_channels

    def main_path(self):
        """The residual branch: a list of layers ending in a BatchNorm."""
        raise NotImplementedError

    def build(self, input_shape):
        channels, dimension = self.input_channels(input_shape)
        _build_chain(self.main, channels, dimension)
        # ME's rule (`_make_layer`): project when the stride or width changes.
        if self.strides != 1 or channels != self.output_channels:
            self.projection = [self.conv(self.output_channels, 1, self.strides),
                               self.norm()]
            _build_chain(self.projection, channels, dimension)

    def call(self, x, training=None):
        x = self.sparse_input(x)
        out = x
        for i, layer in enumerate(self.main):
            if isinstance(layer, so_layers.BatchNorm):
                out = layer(out, training=training)
                if i < len(self.main) - 1:  # ReLU after every norm but the last
                    out = _relu(out)
            else:
                out = layer(out)
        shortcut = x
        if self.projection is not None:
            conv, norm = self.projection
            # Onto the main branch's sites: the same rows in the same order.
            shortcut = norm(conv(x, out_coordinates=out.coordinates), training=training)
        return out.with_features(keras.ops.relu(out.features + shortcut.features))

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        return sparse_spec(x, self.output_channels, self.compute_dtype,
                           same_rows=self.strides == 1,
                           link="same" if self.strides == 1 else "push")

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "strides": self.strides,
                       "dilation_rate": self.dilation_rate})
        return config


@register
class BasicBlock(_ResidualBlock):
    """ME's `BasicBlock`: conv3-BN-ReLU-conv3-BN, plus the shortcut, ReLU.

    The first convolution has the stride and both the dilation. The shortcut
    is the identity, or a 1x1 convolution with the stride + BN when the
    stride is not 1 or the input width is not `filters`. Output channels:
    `filters`.
    """
    expansion = 1

    def main_path(self):
        return [self.conv(self.filters, 3, self.strides, self.dilation_rate),
                self.norm(),
                self.conv(self.filters, 3, 1, self.dilation_rate),
                self.norm()]


@register
class Bottleneck(_ResidualBlock):
    """ME's `Bottleneck`: conv1-BN-ReLU-conv3-BN-ReLU-conv1-BN, plus the
    shortcut, ReLU. The 3x3 convolution has the stride and the dilation;
    output channels: 4 * `filters`; shortcut as `BasicBlock`."""
    expansion = 4

    def main_path(self):
        return [self.conv(self.filters, 1),
                self.norm(),
                self.conv(self.filters, 3, self.strides, self.dilation_rate),
                self.norm(),
                self.conv(self.filters * self.expansion, 1),
                self.norm()]


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _block_class(block):
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {tuple(BLOCKS)}, got {block!r}")
    return BLOCKS[block]


def _int_tuple(values, length, name):
    values = tuple(int(v) for v in values)
    if len(values) != length or min(values) < 1:
        raise ValueError(f"{name} must be {length} positive ints, got {values!r}")
    return values


def _stage(owner, block, filters, count, strides=1):
    """`count` blocks of width `filters` (ME's `_make_layer`): the first has
    the stride (and a projection where needed)."""
    cls = _block_class(block)
    options = dict(bn_momentum=owner.bn_momentum, bn_epsilon=owner.bn_epsilon,
                   bn_synchronized=owner.bn_synchronized,
                   minkowski_windows=owner.minkowski_windows,
                   kernel_initializer=keras.initializers.serialize(
                       owner.kernel_initializer),
                   dtype=owner.dtype_policy)
    return [cls(filters, strides=strides if i == 0 else 1, **options)
            for i in range(count)]


def _run_stage(stage, x, training):
    for block in stage:
        x = block(x, training=training)
    return x


def _pairs(layers):
    """[a0, b0, a1, b1, ...] -> [[a0, b0], [a1, b1], ...]."""
    return [list(layers[i:i + 2]) for i in range(0, len(layers), 2)]


def _split(layers, depths):
    """The flat list of blocks cut into stages of `depths` blocks."""
    ends = [sum(depths[:i + 1]) for i in range(len(depths))]
    return [list(layers[end - n:end]) for end, n in zip(ends, depths)]


def _build_chain(chain, channels, dimension):
    for layer in chain:
        channels = _build(layer, channels, dimension)
    return channels


def _relu(x):
    return x.with_features(keras.ops.relu(x.features))


def _conv_bn_relu(chain, x, training):
    conv, norm = chain
    return _relu(norm(conv(x), training=training))


# -- MinkUNet ----------------------------------------------------------------------

@register
class MinkUNet(_NetworkLayer):
    """ME's `MinkUNetBase`: a residual U-Net with output sites = input sites.

    Encoder: conv5-BN-ReLU (`init_dim`), then four times a stride-2 conv2-BN-
    ReLU followed by `depths[i]` blocks of width `planes[i]` (i = 0..3).
    Decoder (i = 4..7): a stride-2 `ConvTranspose` (kernel 2) of width
    `planes[i]` onto the sites of the encoder tensor of the same stride, BN,
    ReLU, `Concat` with that tensor, `depths[i]` blocks. Last: a 1x1 conv with
    bias to `out_channels`. The input's extent needs no padding: strided sites
    are floor(c / s) * s.

    Args:
      out_channels: channels of the output (e.g. class logits).
      block: "basic" or "bottleneck".
      depths: 8 block counts, one per stage (ME's LAYERS).
      planes: 8 widths (ME's PLANES).
      init_dim: width of the first convolution (ME's INIT_DIM).
      bn_momentum, bn_epsilon, bn_synchronized, kernel_initializer: see the
        module docstring.
    Returns a `SparseTensor` [N, out_channels] on the input's sites.
    """

    def __init__(self, out_channels, block="basic", depths=(1,) * 8,
                 planes=(32, 64, 128, 256, 128, 128, 96, 96), init_dim=32, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = int(out_channels)
        if self.out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels!r}")
        _block_class(block)
        self.block = block
        self.depths = _int_tuple(depths, 8, "depths")
        self.planes = _int_tuple(planes, 8, "planes")
        self.init_dim = int(init_dim)
        self.stem = [self.conv(self.init_dim, 5), self.norm()]
        stages = [_stage(self, block, self.planes[i], self.depths[i]) for i in range(8)]
        # Flat lists of layers: Keras saves the layers of a list, not of a
        # list of lists. Pairs (conv, norm) and stages are cut out by index.
        self.down, self.blocks, self.up = [], [], []
        for i in range(4):
            # ME's conv{i}p{2^i}s2 keeps the width of what it gets: the
            # stem's, then the stage before's.
            width = self.init_dim if i == 0 else stages[i - 1][-1].output_channels
            self.down += [self.conv(width, 2, strides=2), self.norm()]
        for i in range(4, 8):
            self.up += [self.conv(self.planes[i], 2, strides=2, transpose=True),
                        self.norm()]
        for stage in stages:
            self.blocks += stage
        self.concat = [so_layers.Concat(dtype=self.dtype_policy) for _ in range(4)]
        self.final = self.conv(self.out_channels, 1, use_bias=True)

    def build(self, input_shape):
        c, d = self.input_channels(input_shape)
        c = _build_chain(self.stem, c, d)
        skips = [c]
        for down, stage in zip(_pairs(self.down), self.encoder_stages):
            c = _build_chain(down + stage, c, d)
            skips.append(c)
        skips.pop()  # the stride-16 tensor is not a skip
        for up, stage, concat in zip(_pairs(self.up), self.decoder_stages,
                                     self.concat):
            c = concat.compute_output_channels([_build_chain(up, c, d), skips.pop()])
            concat.build(None)
            c = _build_chain(stage, c, d)
        _build(self.final, c, d)

    def call(self, x, training=None):
        x = self.sparse_input(x)
        out = _conv_bn_relu(self.stem, x, training)
        skips = [out]
        for down, stage in zip(_pairs(self.down), self.encoder_stages):
            out = _run_stage(stage, _conv_bn_relu(down, out, training), training)
            skips.append(out)
        skips.pop()
        for up, stage, concat in zip(_pairs(self.up), self.decoder_stages,
                                     self.concat):
            skip = skips.pop()
            conv, norm = up
            out = conv(out, coordinates=skip)
            out = _relu(norm(out, training=training))
            out = _run_stage(stage, concat([out, skip]), training)
        return self.final(out)

    @property
    def encoder_stages(self):
        """The blocks of stages 0..3 (strides 2, 4, 8, 16), a list per stage."""
        return _split(self.blocks, self.depths)[:4]

    @property
    def decoder_stages(self):
        """The blocks of stages 4..7 (strides 8, 4, 2, 1), a list per stage."""
        return _split(self.blocks, self.depths)[4:]

    def compute_output_channels(self, input_channels):
        return self.out_channels

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        return sparse_spec(x, self.out_channels, self.compute_dtype, same_rows=True)

    def get_config(self):
        config = super().get_config()
        config.update({"out_channels": self.out_channels, "block": self.block,
                       "depths": list(self.depths), "planes": list(self.planes),
                       "init_dim": self.init_dim})
        return config


# ME's block counts and width variants (examples/minkunet.py).
MINKUNET_DEPTHS = {14: (1,) * 8, 18: (2,) * 8, 34: (2, 3, 4, 6, 2, 2, 2, 2)}
MINKUNET_PLANES = {
    14: {"A": (32, 64, 128, 256, 128, 128, 96, 96),
         "B": (32, 64, 128, 256, 128, 128, 128, 128),
         "C": (32, 64, 128, 256, 192, 192, 128, 128),
         "D": (32, 64, 128, 256, 384, 384, 384, 384)},
    18: {"A": (32, 64, 128, 256, 128, 128, 96, 96),
         "B": (32, 64, 128, 256, 128, 128, 128, 128),
         "D": (32, 64, 128, 256, 384, 384, 384, 384)},
    34: {"A": (32, 64, 128, 256, 256, 128, 64, 64),
         "B": (32, 64, 128, 256, 256, 128, 64, 32),
         "C": (32, 64, 128, 256, 256, 128, 96, 96)},
}


def _minkunet(depth, out_channels, variant, planes, **kwargs):
    if planes is None:
        variants = MINKUNET_PLANES[depth]
        if variant not in variants:
            raise ValueError(f"MinkUNet{depth} variants are {tuple(variants)}, got "
                             f"{variant!r} (or pass planes=)")
        planes = variants[variant]
    return MinkUNet(out_channels, block="basic", depths=MINKUNET_DEPTHS[depth],
                    planes=planes, **kwargs)


def MinkUNet14(out_channels, variant="A", planes=None, **kwargs):  # noqa: N802
    """ME's MinkUNet14{A,B,C,D}: one BasicBlock per stage; `planes` (8
    widths) overrides the variant, `init_dim` and the rest go to `MinkUNet`."""
    return _minkunet(14, out_channels, variant, planes, **kwargs)


def MinkUNet18(out_channels, variant="A", planes=None, **kwargs):  # noqa: N802
    """ME's MinkUNet18{A,B,D}: two BasicBlocks per stage (see `MinkUNet14`)."""
    return _minkunet(18, out_channels, variant, planes, **kwargs)


def MinkUNet34(out_channels, variant="C", planes=None, **kwargs):  # noqa: N802
    """ME's MinkUNet34{A,B,C}: (2, 3, 4, 6, 2, 2, 2, 2) BasicBlocks (see
    `MinkUNet14`)."""
    return _minkunet(34, out_channels, variant, planes, **kwargs)


# -- ResNet classifier ------------------------------------------------------------

@register
class ResNet(_NetworkLayer):
    """ME's `ResNetBase` (examples/resnet.py): a sparse classifier.

    conv3 (stride 2, `init_dim`)-InstanceNorm-ReLU-MaxPool(2); four stages of
    `depths[i]` blocks of width `planes[i]`, each starting with stride 2;
    Dropout(`dropout`)-conv3 (stride 3)-InstanceNorm-GELU; global max pooling
    over each batch item's sites; a dense layer to `num_classes` (with bias).
    Returns dense logits [B, num_classes], B = max batch index + 1.
    """

    def __init__(self, num_classes, block="basic", depths=(2, 2, 2, 2),
                 planes=(64, 128, 256, 512), init_dim=64, dropout=0.5,
                 instance_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.instance_norm_epsilon = float(instance_norm_epsilon)
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes!r}")
        _block_class(block)
        self.block = block
        self.depths = _int_tuple(depths, 4, "depths")
        self.planes = _int_tuple(planes, 4, "planes")
        self.init_dim = int(init_dim)
        self.dropout = float(dropout)
        self.stem = [self.conv(self.init_dim, 3, strides=2),
                     so_layers.InstanceNorm(epsilon=self.instance_norm_epsilon,
                                            dtype=self.dtype_policy),
                     so_layers.ReLU(dtype=self.dtype_policy),
                     so_layers.MaxPool(2, strides=2, dtype=self.dtype_policy)]
        self.blocks = []  # flat, as in MinkUNet
        for p, n in zip(self.planes, self.depths):
            self.blocks += _stage(self, block, p, n, strides=2)
        width = self.blocks[-1].output_channels  # the last stage's
        self.head = [so_layers.Dropout(self.dropout, dtype=self.dtype_policy),
                     self.conv(width, 3, strides=3),
                     so_layers.InstanceNorm(epsilon=self.instance_norm_epsilon,
                                            dtype=self.dtype_policy),
                     so_layers.Activation("gelu", dtype=self.dtype_policy)]
        self.pool = so_layers.GlobalMaxPool(dtype=self.dtype_policy)
        self.final = keras.layers.Dense(self.num_classes, dtype=self.dtype_policy)

    def build(self, input_shape):
        c, d = self.input_channels(input_shape)
        c = _build_chain(self.stem, c, d)
        for stage in self.stages:
            c = _build_chain(stage, c, d)
        c = _build_chain(self.head, c, d)
        self.final.build((None, c))

    def call(self, x, training=None):
        x = self.sparse_input(x)
        for layer in self.stem:
            x = layer(x)
        for stage in self.stages:
            x = _run_stage(stage, x, training)
        for layer in self.head:
            x = layer(x, training=training) if isinstance(
                layer, so_layers.Dropout) else layer(x)
        return self.final(self.pool(x))

    @property
    def stages(self):
        """The blocks, a list per stage."""
        return _split(self.blocks, self.depths)

    def compute_output_channels(self, input_channels):
        return self.num_classes

    def compute_output_spec(self, x, *args, **kwargs):
        del args, kwargs
        return keras.KerasTensor((None, self.num_classes), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "block": self.block,
                       "depths": list(self.depths), "planes": list(self.planes),
                       "init_dim": self.init_dim, "dropout": self.dropout,
                       "instance_norm_epsilon": self.instance_norm_epsilon})
        return config


RESNET_DEPTHS = {14: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)),
                 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _resnet(depth, num_classes, **kwargs):
    block, counts = RESNET_DEPTHS[depth]
    return ResNet(num_classes, block=block, depths=counts, **kwargs)


def ResNet14(num_classes, **kwargs):  # noqa: N802
    """ME's ResNet14: one BasicBlock per stage; kwargs go to `ResNet`."""
    return _resnet(14, num_classes, **kwargs)


def ResNet18(num_classes, **kwargs):  # noqa: N802
    """ME's ResNet18: two BasicBlocks per stage."""
    return _resnet(18, num_classes, **kwargs)


def ResNet34(num_classes, **kwargs):  # noqa: N802
    """ME's ResNet34: (3, 4, 6, 3) BasicBlocks."""
    return _resnet(34, num_classes, **kwargs)


def ResNet50(num_classes, **kwargs):  # noqa: N802
    """ME's ResNet50: (3, 4, 6, 3) Bottleneck blocks (widths x4)."""
    return _resnet(50, num_classes, **kwargs)


# MinkowskiEngine checkpoints (state_dicts as numpy arrays) for these models.
from sparse_ops.minkowski_weights import load_minkowski_weights  # noqa: E402,F401
