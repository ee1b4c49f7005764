"""Data preparation: voxelization and batching of point clouds."""

import numpy as np
import tensorflow as tf

_MODES = ("average", "sum", "max", "first", "random")


def _numpy(x, name, required=False):
    """x as a numpy array (None stays None unless required); TypeError naming
    the argument for values that are not arrays of numbers."""
    if x is None:
        if required:
            raise TypeError(f"{name} must be an array, got None")
        return None
    if isinstance(x, (tf.Tensor, tf.Variable)):
        x = x.numpy()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array of numbers: {e}") from None
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an array of numbers, got {a.dtype} values")
    return a


def _sequence(x, name):
    """A list of the samples in x: a list or tuple of arrays, or an array
    (or tensor) stacking equal-sized samples along its first axis."""
    if isinstance(x, (np.ndarray, tf.Tensor)) and np.ndim(x) >= 1:
        return list(x)
    if isinstance(x, (str, bytes)) or not isinstance(x, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays (one per sample), got "
                        f"{type(x).__name__}")
    return list(x)


def sparse_quantize(points, features=None, labels=None, voxel_size=1.0,
                    mode="average", ignore_label=-100, return_index=False,
                    return_inverse=False, seed=None):
    """Voxelizes points: coordinates floor(points / voxel_size), duplicates merged.

    Args:
      points: [N, D] float or int array (no batch column).
      features: optional [N, C]; merged per voxel by `mode`.
      labels: optional [N] ints; a voxel whose points disagree gets
        `ignore_label`.
      voxel_size: scalar or D sizes.
      mode: "average", "sum", "max", "first" or "random" (a random point of
        each voxel, drawn with `seed`).
      return_index: also return, per voxel, the index of the point kept
        (the first, or the random one).
      return_inverse: also return, per point, its voxel's row (slicing voxel
        predictions back to points: `voxel_values[inverse]`).
    Returns:
      int32 coordinates [M, D] in sorted order, then the merged features,
      labels, index and inverse as requested.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    pts = _numpy(points, "points", required=True)
    if pts.ndim != 2:
        raise ValueError(f"points must be [N, D], got shape {pts.shape}")
    n, d = pts.shape
    size = _numpy(voxel_size, "voxel_size", required=True).astype(np.float64)
    if size.ndim > 1 or size.size not in (1, d):
        raise ValueError(f"voxel_size must be a scalar or {d} sizes, got {voxel_size!r}")
    size = np.broadcast_to(size.reshape(-1), [d])
    if not np.all(np.isfinite(size) & (size > 0)):
        raise ValueError(f"voxel_size must be finite and positive, got {voxel_size!r}")
    pts = pts.astype(np.float64)
    if not np.all(np.isfinite(pts)):
        bad = int(np.argmax(~np.all(np.isfinite(pts), axis=1)))
        raise ValueError(f"points must be finite; point {bad} is {pts[bad].tolist()}")
    grid = np.floor(pts / size)
    if grid.size and (grid.min() < -2**31 or grid.max() >= 2**31):
        raise ValueError("points / voxel_size do not fit into int32 coordinates; "
                         "use a larger voxel_size")
    grid = grid.astype(np.int32).reshape(n, d)
    if n == 0:
        coords, first = np.zeros((0, d), np.int32), np.zeros(0, np.int64)
        inverse, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    else:
        coords, first, inverse, counts = np.unique(
            grid, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    m = len(coords)
    index = first
    if mode == "random" and n > 0:
        rng = np.random.default_rng(seed)
        # A random member of each voxel: sort points by (voxel, random key).
        order = np.lexsort((rng.random(n), inverse))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        index = order[starts]
    outputs = [coords]
    if features is not None:
        f = _numpy(features, "features")
        if f.shape[0] != n:
            raise ValueError(f"features has {f.shape[0]} rows but points has {n}")
        f2 = f.reshape(n, int(np.prod(f.shape[1:], dtype=np.int64)))
        if mode in ("average", "sum"):
            merged = np.zeros((m, f2.shape[1]), np.float64)
            np.add.at(merged, inverse, f2)
            if mode == "average":
                merged /= counts[:, None]
            merged = merged.astype(f.dtype if np.issubdtype(f.dtype, np.floating)
                                   else np.float32)
        elif mode == "max":
            merged = np.full((m, f2.shape[1]), -np.inf, np.float64)
            np.maximum.at(merged, inverse, f2)
            merged = merged.astype(f.dtype)
        else:
            merged = f2[index]
        outputs.append(merged.reshape((m,) + f.shape[1:]))
    if labels is not None:
        lab = _numpy(labels, "labels").reshape(-1)
        if lab.shape[0] != n:
            raise ValueError(f"labels has {lab.shape[0]} entries but points has {n}")
        lo = np.full(m, np.iinfo(np.int64).max)
        hi = np.full(m, np.iinfo(np.int64).min)
        np.minimum.at(lo, inverse, lab)
        np.maximum.at(hi, inverse, lab)
        outputs.append(np.where(lo == hi, lo, ignore_label).astype(lab.dtype))
    if return_index:
        outputs.append(index.astype(np.int64))
    if return_inverse:
        outputs.append(inverse.astype(np.int64))
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def batched_coordinates(list_of_coords):
    """[coords_0 [N0, D], coords_1, ...] -> int32 [sum N, 1 + D], batch first."""
    arrays = [_numpy(c, f"list_of_coords[{i}]", required=True)
              for i, c in enumerate(_sequence(list_of_coords, "list_of_coords"))]
    if not arrays:
        raise ValueError("list_of_coords must not be empty")
    d = arrays[0].shape[1] if arrays[0].ndim == 2 else None
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[1] != d or d < 1:
            raise ValueError(f"list_of_coords[{i}] must be [N, D] (D >= 1, the same "
                             f"for every sample), got shape {a.shape}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.floor(a))):
            raise ValueError(f"list_of_coords[{i}] has non-integer coordinates; "
                             "voxelize with sparse_quantize first")
    batch = np.concatenate([np.full(len(a), i, np.int32) for i, a in enumerate(arrays)])
    spatial = np.concatenate([a.astype(np.int64) for a in arrays])
    if spatial.size and (spatial.min() < -2**31 or spatial.max() >= 2**31):
        raise ValueError("coordinates do not fit into int32")
    return np.concatenate([batch[:, None], spatial.astype(np.int32)], 1)


def sparse_collate(coords_list, feats_list, labels_list=None):
    """Batches per-sample (coords, feats[, labels]) into (coordinates, features[,
    labels]) with the batch index in coordinates' column 0."""
    coords_list = _sequence(coords_list, "coords_list")
    feats_list = _sequence(feats_list, "feats_list")
    if labels_list is not None:
        labels_list = _sequence(labels_list, "labels_list")
    if len(coords_list) != len(feats_list) or (
            labels_list is not None and len(labels_list) != len(coords_list)):
        raise ValueError("coords_list, feats_list and labels_list must have the same "
                         "length")
    coordinates = batched_coordinates(coords_list)
    feats = [_numpy(f, f"feats_list[{i}]", required=True)
             for i, f in enumerate(feats_list)]
    sizes = [len(c) for c in coords_list]  # batched_coordinates checked them
    for i, (n, f) in enumerate(zip(sizes, feats)):
        if f.ndim < 1 or len(f) != n or f.shape[1:] != feats[0].shape[1:]:
            raise ValueError(f"feats_list[{i}] must be [{n}, C] (one row per "
                             f"coordinate, C the same for every sample), got shape "
                             f"{f.shape}")
    features = np.concatenate(feats)
    if labels_list is None:
        return coordinates, features
    labels = [_numpy(item, f"labels_list[{i}]", required=True)
              for i, item in enumerate(labels_list)]
    for i, (n, item) in enumerate(zip(sizes, labels)):
        if item.ndim < 1 or len(item) != n:
            raise ValueError(f"labels_list[{i}] must have {n} rows (one per "
                             f"coordinate), got shape {item.shape}")
    return coordinates, features, np.concatenate(labels)
