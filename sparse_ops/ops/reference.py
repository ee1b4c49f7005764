"""Pure-TensorFlow reference implementations of the custom ops.

The test oracle, and a portable fallback: graphs built from these ops run on
a stock TensorFlow (or TF Serving) binary. Same semantics and the same row
order as the C++ ops; differentiated by TensorFlow's own autodiff.
"""

import tensorflow as tf

_MAX_KEY_BITS = 63


# Probes (or candidate sites) the pure-TF kernel map and generative
# coordinates hold at once: more are taken in blocks of offsets, so their
# memory follows the data (a few hundred MB at most), not offsets x sites.
_BLOCK_PROBES = 1 << 22


def _layout(coordinates):
    """Mixed-radix key layout (lo, hi, multipliers) over the rows' range."""
    c = tf.cast(coordinates, tf.int64)
    nonempty = tf.shape(c)[0] > 0
    lo = tf.where(nonempty, tf.reduce_min(c, 0), 0)
    hi = tf.where(nonempty, tf.reduce_max(c, 0), 0)
    return _layout_of_range(lo, hi)


def _layout_of_range(lo, hi):
    """The layout of keys for rows in [lo, hi] per axis (int64 vectors)."""
    span = hi - lo + 1
    # Exact bit widths, as the C++ KeyPacker: bits of (hi - lo) per axis.
    shifts = tf.range(64, dtype=tf.int64)
    bits = tf.reduce_sum(tf.cast(
        tf.bitwise.right_shift((hi - lo)[:, tf.newaxis], shifts) > 0, tf.int64))
    check = tf.debugging.assert_less_equal(
        bits, tf.constant(_MAX_KEY_BITS, tf.int64),
        message="coordinates span too large a range to pack into a 64-bit key; "
        "use a larger voxel size, fewer dimensions, or coordinates that span a "
        "smaller range")
    with tf.control_dependencies([check]):
        multipliers = tf.math.cumprod(span, reverse=True, exclusive=True)
    return lo, hi, multipliers


def _offset_blocks(num_offsets, rows, body, outputs):
    """Runs body(first, count) -> tensors for blocks of offsets of at most
    _BLOCK_PROBES probes (rows each), and concatenates each output over the
    blocks (a tf.while_loop over TensorArrays: memory per block)."""
    block = tf.maximum(tf.constant(_BLOCK_PROBES, tf.int64) // tf.maximum(rows, 1), 1)
    num_blocks = (num_offsets + block - 1) // block
    arrays = [tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False)
              for dtype in outputs]

    def step(b, *arrays):
        first = b * block
        parts = body(first, tf.minimum(block, num_offsets - first))
        return (b + 1,) + tuple(a.write(tf.cast(b, tf.int32), part)
                                for a, part in zip(arrays, parts))

    _, *arrays = tf.while_loop(lambda b, *_: b < num_blocks, step,
                               (tf.constant(0, tf.int64), *arrays))
    return [tf.cond(num_blocks > 0, a.concat,
                    lambda dtype=dtype: tf.zeros([0], dtype))
            for a, dtype in zip(arrays, outputs)]


def _pack(q, lo, hi, multipliers):
    """Keys of int64 rows q [..., dims] and whether each lies in [lo, hi]."""
    valid = tf.reduce_all((q >= lo) & (q <= hi), axis=-1)
    return tf.reduce_sum((q - lo) * multipliers, axis=-1), valid


def _unpack(keys, lo, hi, multipliers):
    span = hi - lo + 1
    return tf.cast(lo + (keys[:, None] // multipliers) % span, tf.int32)


def _check_batch(coordinates, name):
    return tf.debugging.assert_non_negative(
        coordinates[:, 0], message=f"{name} has a negative batch index")


def _check_stride(stride):
    return tf.debugging.assert_positive(stride, message="stride entries must be >= 1")


def _pad_batch(steps):
    """[K, D] spatial steps -> [K, 1 + D] with a zero batch column."""
    return tf.pad(steps, [[0, 0], [1, 0]])


def kernel_map(in_coordinates, out_coordinates, offsets, stride):
    with tf.control_dependencies([
            _check_batch(in_coordinates, "in_coordinates"),
            _check_batch(out_coordinates, "out_coordinates"),
            _check_stride(stride)]):
        in_c = tf.cast(in_coordinates, tf.int64)
        out_c = tf.cast(out_coordinates, tf.int64)
    lo, hi, mult = _layout(in_c)
    in_keys, _ = _pack(in_c, lo, hi, mult)
    order = tf.argsort(in_keys, stable=True)
    sorted_keys = tf.gather(in_keys, order)
    checks = [_check_sorted_unique(sorted_keys, "in_coordinates")]
    if out_coordinates is not in_coordinates:
        checks.append(_check_unique(out_c, "out_coordinates"))
    steps = _pad_batch(tf.cast(offsets, tf.int64) * tf.cast(stride, tf.int64))
    num_in = tf.shape(sorted_keys)[0]
    with tf.control_dependencies(checks):
        table = tf.concat([sorted_keys, [-1]], 0)

    def block(first, count):
        """(offset, in row, out row) of the pairs of offsets [first, first + count)."""
        q = out_c[tf.newaxis] + tf.slice(steps, [first, 0], [count, -1])[:, tf.newaxis]
        keys, valid = _pack(q, lo, hi, mult)  # [count, M]
        pos = tf.searchsorted(sorted_keys[tf.newaxis], tf.reshape(keys, [1, -1]))[0]
        pos = tf.reshape(tf.minimum(pos, tf.maximum(num_in - 1, 0)), tf.shape(keys))
        hit = tf.gather(table, tf.where(num_in > 0, pos, num_in))
        k_o = tf.where(valid & tf.equal(hit, keys))  # by offset, then output row
        in_rows = tf.cast(tf.gather(order, tf.gather_nd(pos, k_o)), tf.int64)
        return (k_o[:, 0] + first, in_rows, k_o[:, 1])

    num_offsets = tf.shape(offsets, out_type=tf.int64)[0]
    pair_offsets, in_rows, out_rows = _offset_blocks(
        num_offsets, tf.shape(out_c, out_type=tf.int64)[0], block,
        (tf.int64, tf.int64, tf.int64))
    counts = tf.math.bincount(tf.cast(pair_offsets, tf.int32),
                              minlength=tf.cast(num_offsets, tf.int32),
                              maxlength=tf.cast(num_offsets, tf.int32), dtype=tf.int64)
    splits = tf.concat([[0], tf.cumsum(counts)], 0)
    return splits, tf.cast(in_rows, tf.int32), tf.cast(out_rows, tf.int32)


def _check_sorted_unique(sorted_keys, name):
    duplicate = tf.reduce_any(tf.equal(sorted_keys[1:], sorted_keys[:-1]))
    return tf.debugging.Assert(
        tf.logical_not(duplicate),
        [f"{name} has duplicate sites; merge duplicates first, e.g. with "
         "sparse_ops.utils.sparse_quantize"])


def _check_unique(coordinates, name):
    lo, hi, mult = _layout(coordinates)
    keys, _ = _pack(coordinates, lo, hi, mult)
    return _check_sorted_unique(tf.sort(keys), name)


def _unique_sorted_rows(rows):
    """Unique int64 rows [n, dims], sorted lexicographically, as int32."""
    lo, hi, mult = _layout(rows)
    keys, _ = _pack(rows, lo, hi, mult)
    unique = tf.sort(tf.unique(keys).y)
    return _unpack(unique, lo, hi, mult)


def _check_int32(rows, what):
    return tf.debugging.assert_equal(
        tf.reduce_all((rows >= -2**31) & (rows <= 2**31 - 1)), True,
        message=f"{what} would overflow the int32 range")


def strided_coordinates(coordinates, stride):
    with tf.control_dependencies([_check_batch(coordinates, "coordinates"),
                                  _check_stride(stride)]):
        c = tf.cast(coordinates, tf.int64)
    s = tf.cast(stride, tf.int64)
    strided = tf.concat([c[:, :1], tf.math.floordiv(c[:, 1:], s) * s], 1)
    with tf.control_dependencies([_check_int32(strided, "strided coordinates")]):
        return _unique_sorted_rows(strided)


def generative_coordinates(coordinates, offsets, stride):
    with tf.control_dependencies([_check_batch(coordinates, "coordinates"),
                                  _check_stride(stride)]):
        c = tf.cast(coordinates, tf.int64)
    steps = _pad_batch(tf.cast(offsets, tf.int64) * tf.cast(stride, tf.int64))
    n = tf.shape(c, out_type=tf.int64)[0]
    # One layout for every block: the rows' range widened by the steps.
    nonempty = (n > 0) & (tf.shape(steps)[0] > 0)
    lo = tf.where(nonempty, tf.reduce_min(c, 0) + tf.reduce_min(
        tf.concat([steps, tf.zeros_like(steps[:1])], 0), 0), 0)
    hi = tf.where(nonempty, tf.reduce_max(c, 0) + tf.reduce_max(
        tf.concat([steps, tf.zeros_like(steps[:1])], 0), 0), 0)
    with tf.control_dependencies([_check_int32(tf.stack([lo, hi]),
                                               "generated coordinates")]):
        lo, hi, mult = _layout_of_range(lo, hi)

    # Blocks of offsets of at most _BLOCK_PROBES candidates, merged into the
    # unique keys so far: memory follows the output, not n * K.
    num_offsets = tf.shape(steps, out_type=tf.int64)[0]
    block = tf.maximum(tf.constant(_BLOCK_PROBES, tf.int64) // tf.maximum(n, 1), 1)

    def step(first, keys):
        rows = c[:, tf.newaxis] + tf.slice(
            steps, [first, 0], [tf.minimum(block, num_offsets - first), -1])[tf.newaxis]
        new, _ = _pack(rows, lo, hi, mult)
        keys = tf.unique(tf.concat([keys, tf.reshape(new, [-1])], 0)).y
        check = tf.debugging.assert_less(
            tf.size(keys, out_type=tf.int64), tf.constant(2**31 - 1, tf.int64),
            message="generative convolution would create too many sites")
        with tf.control_dependencies([check]):
            return first + block, tf.identity(keys)

    _, keys = tf.while_loop(lambda first, _: first < num_offsets, step,
                            (tf.constant(0, tf.int64), tf.zeros([0], tf.int64)),
                            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None])))
    return _unpack(tf.sort(keys), lo, hi, mult)


def _pairs(kmap, k):
    splits, in_rows, out_rows = kmap
    begin, size = splits[k], splits[k + 1] - splits[k]
    return tf.slice(in_rows, [begin], [size]), tf.slice(out_rows, [begin], [size])


def conv(features, kernel, kmap, num_out_rows):
    """out[o] = sum over pairs (i, o) of offset k of features[i] @ kernel[k]."""
    parts, rows = [], []
    for k in range(kernel.shape[0]):
        in_rows, out_rows = _pairs(kmap, k)
        parts.append(tf.matmul(tf.gather(features, in_rows), kernel[k]))
        rows.append(out_rows)
    out = tf.math.unsorted_segment_sum(
        tf.concat(parts, 0) if parts else tf.zeros([0, kernel.shape[2]], features.dtype),
        tf.concat(rows, 0) if rows else tf.zeros([0], tf.int32), num_out_rows)
    return tf.ensure_shape(out, [None, kernel.shape[2]])


def conv_backprop_input(grad_output, kernel, kmap, num_in_rows):
    """in[i] = sum over pairs (i, o) of offset k of grad_output[o] @ kernel[k]^T."""
    parts, rows = [], []
    for k in range(kernel.shape[0]):
        in_rows, out_rows = _pairs(kmap, k)
        parts.append(tf.matmul(tf.gather(grad_output, out_rows), kernel[k],
                               transpose_b=True))
        rows.append(in_rows)
    out = tf.math.unsorted_segment_sum(
        tf.concat(parts, 0) if parts else tf.zeros([0, kernel.shape[1]],
                                                   grad_output.dtype),
        tf.concat(rows, 0) if rows else tf.zeros([0], tf.int32), num_in_rows)
    return tf.ensure_shape(out, [None, kernel.shape[1]])


def depthwise_conv(features, kernel, kmap, num_out_rows):
    """out[o, c * M + m] = sum over pairs (i, o) of offset k of
    features[i, c] * kernel[k, c, m]."""
    width = kernel.shape[1] * kernel.shape[2]
    parts, rows = [], []
    for k in range(kernel.shape[0]):
        in_rows, out_rows = _pairs(kmap, k)
        products = tf.gather(features, in_rows)[:, :, None] * kernel[k][None]
        parts.append(tf.reshape(products, [-1, width]))
        rows.append(out_rows)
    out = tf.math.unsorted_segment_sum(
        tf.concat(parts, 0) if parts else tf.zeros([0, width], features.dtype),
        tf.concat(rows, 0) if rows else tf.zeros([0], tf.int32), num_out_rows)
    return tf.ensure_shape(out, [None, width])


def attention(features, coordinates, k, mode="value", per="channel"):
    """keep [N, C] and the kept rows [S], as SparseOps>Attention: per batch
    item (coordinates[:, 0]) and channel, the k best entries in the order
    (key descending, row ascending); per="site" ranks sites by L2 norm.

    Two stable sorts (a full sort, where the C++ op selects in O(n)): by key,
    then by batch index, which keeps the key order within each batch item;
    an entry's rank is then its distance from the start of its item.
    """
    k = tf.cast(k, tf.int64)
    with tf.control_dependencies([
            _check_batch(coordinates, "coordinates"),
            tf.debugging.assert_non_negative(k, message="k must be >= 0")]):
        features = tf.identity(features)
    if per == "site":
        keys = tf.reduce_sum(features * features, axis=1, keepdims=True)
    else:
        keys = tf.abs(features) if mode == "abs" else features
    keys = tf.where(tf.math.is_nan(keys), tf.constant(-float("inf"), keys.dtype), keys)
    keys = tf.transpose(keys)  # [C', N]
    n = tf.shape(keys, out_type=tf.int64)[1]
    # top_k puts equal keys in index order: ties go to the lower row.
    by_key = tf.argsort(keys, axis=1, direction="DESCENDING", stable=True)
    batch = tf.gather(tf.cast(coordinates[:, 0], tf.int64), by_key)
    # Unique composite keys, so the second sort needs no stability.
    order = tf.argsort(batch * n + tf.range(n), axis=1)
    rows = tf.gather(by_key, order, batch_dims=1)
    batch = tf.gather(batch, order, batch_dims=1)
    rank = tf.range(n) - tf.searchsorted(batch, batch, side="left", out_type=tf.int64)
    lanes = tf.broadcast_to(tf.range(tf.shape(rows)[0])[:, None], tf.shape(rows))
    keep = tf.scatter_nd(tf.stack([lanes, rows], -1), tf.cast(rank < k, tf.int32),
                         tf.shape(keys)) > 0
    keep = tf.broadcast_to(tf.transpose(keep), tf.shape(features))
    kept_rows = tf.where(tf.reduce_any(keep, axis=1))[:, 0]
    return keep, tf.cast(kept_rows, tf.int32)


# -- pooling ----------------------------------------------------------------

def _pair_counts(out_rows, num_rows, dtype):
    return tf.math.unsorted_segment_sum(tf.ones_like(out_rows, dtype), out_rows, num_rows)


def max_pool(features, kmap, num_out_rows):
    """out[o] = max over the pairs (i, o) of features[i]; 0 without pairs."""
    _, in_rows, out_rows = kmap
    out = tf.math.unsorted_segment_max(tf.gather(features, in_rows), out_rows,
                                       num_out_rows)
    present = _pair_counts(out_rows, num_out_rows, tf.int32) > 0
    return tf.where(present[:, None], out, tf.zeros_like(out))


def sum_pool(features, kmap, num_out_rows, average=False):
    """out[o] = sum (average: mean) over the pairs (i, o) of features[i]."""
    _, in_rows, out_rows = kmap
    out = tf.math.unsorted_segment_sum(tf.gather(features, in_rows), out_rows,
                                       num_out_rows)
    if average:
        count = _pair_counts(out_rows, num_out_rows, out.dtype)
        out = out / tf.maximum(count, 1)[:, None]
    return out


def sum_pool_transpose(features, kmap, num_in_rows, average=False):
    """The adjoint of `sum_pool`: out[i] = sum over the pairs (i, o) of
    features[o] (average: each divided by the pair count of o)."""
    _, in_rows, out_rows = kmap
    if average:
        count = _pair_counts(out_rows, tf.shape(features)[0], features.dtype)
        features = features / tf.maximum(count, 1)[:, None]
    return tf.math.unsorted_segment_sum(tf.gather(features, out_rows), in_rows,
                                        num_in_rows)


def global_pool(features, batch_index, num_batches, mode):
    """[B, C] max / avg / sum over the rows of each batch item; 0 for items
    without rows."""
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.reduce_all((batch_index >= 0) & (batch_index < tf.cast(
                num_batches, batch_index.dtype))), True,
            message="batch index out of range [0, num_batches)")]):
        features = tf.identity(features)
    if mode == "max":
        out = tf.math.unsorted_segment_max(features, batch_index, num_batches)
        present = _pair_counts(batch_index, num_batches, tf.int32) > 0
        return tf.where(present[:, None], out, tf.zeros_like(out))
    out = tf.math.unsorted_segment_sum(features, batch_index, num_batches)
    if mode == "avg":
        count = _pair_counts(batch_index, num_batches, out.dtype)
        out = out / tf.maximum(count, 1)[:, None]
    return out


def coordinate_lookup(coordinates, queries):
    """rows[q] = the row of `coordinates` equal to queries[q], or -1 (also for
    queries outside the set's range or with a negative batch index)."""
    with tf.control_dependencies([_check_batch(coordinates, "coordinates")]):
        c = tf.cast(coordinates, tf.int64)
    lo, hi, mult = _layout(c)
    keys, _ = _pack(c, lo, hi, mult)
    order = tf.argsort(keys, stable=True)
    sorted_keys = tf.gather(keys, order)
    query_keys, valid = _pack(tf.cast(queries, tf.int64), lo, hi, mult)
    n = tf.shape(sorted_keys)[0]
    pos = tf.minimum(tf.searchsorted(sorted_keys, query_keys), tf.maximum(n - 1, 0))
    pos = tf.where(n > 0, pos, n)  # with no sites: the sentinel below
    with tf.control_dependencies([_check_sorted_unique(sorted_keys, "coordinates")]):
        hit = tf.gather(tf.concat([sorted_keys, [-1]], 0), pos)
    rows = tf.gather(tf.concat([order, [-1]], 0), pos)
    return tf.where(valid & tf.equal(hit, query_keys), rows, -1)


def coordinate_union(coordinates_list):
    """Union of coordinate sets in order of first appearance (the rows of the
    first input, then new sites of the next ones), and each input's rows in it."""
    checks = []
    for i, c in enumerate(coordinates_list):
        checks += [_check_batch(c, f"coordinates[{i}]"),
                   _check_unique(tf.cast(c, tf.int64), f"coordinates[{i}]")]
    with tf.control_dependencies(checks):
        rows = tf.concat([tf.cast(c, tf.int64) for c in coordinates_list], 0)
    lo, hi, mult = _layout(rows)
    keys, _ = _pack(rows, lo, hi, mult)
    unique, index = tf.unique(keys)  # in order of first appearance
    sizes = tf.stack([tf.shape(c)[0] for c in coordinates_list])
    return (_unpack(unique, lo, hi, mult),
            tf.split(index, sizes, num=len(coordinates_list)))


def voxelize(points, features, voxel_size, mode):
    """The five outputs of SparseOps>Voxelize (coordinates, merged, inverse,
    counts, source) with TensorFlow ops: packed keys of the grid rows, a
    stable argsort, run heads; merges by segment sums and gathers, so that
    autodiff sends max and first gradients to the source point."""
    p = tf.cast(points, tf.float64)
    n = tf.shape(p, out_type=tf.int64)[0]
    batch, position = p[:, 0], p[:, 1:]
    grid = tf.floor(position / voxel_size)
    checks = [
        tf.debugging.assert_equal(
            tf.reduce_all((batch >= 0) & (batch <= 2**31 - 1) & (batch == tf.floor(batch))),
            True, message="points: batch indices (column 0) must be whole numbers in [0, 2^31)"),
        tf.debugging.assert_equal(tf.reduce_all(tf.math.is_finite(position)), True,
                                  message="points has a non-finite position"),
        tf.debugging.assert_equal(
            tf.reduce_all((grid >= -2.0**31) & (grid <= 2.0**31 - 1)), True,
            message="points / voxel_size lies outside the int32 range of coordinates; "
            "use a larger voxel_size"),
    ]
    with tf.control_dependencies(checks):
        rows = tf.cast(tf.concat([batch[:, None], grid], 1), tf.int64)
    lo, hi, mult = _layout(rows)
    keys, _ = _pack(rows, lo, hi, mult)
    order = tf.argsort(keys, stable=True)
    sorted_keys = tf.gather(keys, order)
    head = tf.concat([tf.ones([tf.minimum(n, 1)], tf.bool),
                      sorted_keys[1:] != sorted_keys[:-1]], 0)
    site = tf.cumsum(tf.cast(head, tf.int32)) - 1
    inverse = tf.scatter_nd(order[:, None], site, tf.shape(keys))
    m = tf.reduce_sum(tf.cast(head, tf.int32))
    coordinates = tf.cast(tf.boolean_mask(tf.gather(rows, order), head), tf.int32)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(inverse), inverse, m)
    index = tf.range(tf.cast(n, tf.int32))
    first = tf.math.unsorted_segment_min(index, inverse, m)
    channels = tf.shape(features)[1]
    if mode in ("sum", "average"):
        total = tf.math.unsorted_segment_sum(tf.cast(features, tf.float64), inverse, m)
        if mode == "average":
            total /= tf.cast(counts, tf.float64)[:, None]
        return (coordinates, tf.cast(total, features.dtype), inverse, counts,
                tf.zeros([0, channels], tf.int32))
    if mode == "first":
        source = tf.tile(first[:, None], [1, channels])
    else:  # the first point holding the maximum, NaN winning
        nan = tf.math.is_nan(features)
        any_nan = tf.math.unsorted_segment_max(tf.cast(nan, tf.int32), inverse, m) > 0
        low = tf.fill(tf.shape(features), tf.constant(-float("inf"), features.dtype))
        best = tf.math.unsorted_segment_max(tf.where(nan, low, features), inverse, m)
        holds = tf.where(tf.gather(any_nan, inverse), nan,
                         tf.equal(features, tf.gather(best, inverse)))
        never = tf.fill(tf.shape(features), tf.cast(n, tf.int32))
        source = tf.math.unsorted_segment_min(
            tf.where(holds, tf.broadcast_to(index[:, None], tf.shape(features)), never),
            inverse, m)
    columns = tf.broadcast_to(tf.range(channels)[None, :], tf.shape(source))
    merged = tf.gather_nd(features, tf.stack([source, columns], -1))
    return coordinates, merged, inverse, counts, source
