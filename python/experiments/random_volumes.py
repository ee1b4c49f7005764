"""Uniformly random sparse sites: the input volumes of the paper's Sec. 4.1
(run time and memory of one convolution layer)."""

import numpy as np


def random_sites(resolution, batch, density, dimension=3, seed=0):
    """int32 coordinates [N, 1 + D] of `density * resolution^D` distinct
    uniformly random cells per batch item (the paper's Sec. 4.1 volumes)."""
    rng = np.random.default_rng(seed)
    volume = resolution ** dimension
    count = max(int(round(density * volume)), 1)
    out = []
    for b in range(batch):
        cells = np.unique(rng.integers(0, volume, int(count * 1.05) + 16))
        cells = rng.permutation(cells)[:count]
        while len(cells) < count:  # rare: too many collisions
            extra = np.setdiff1d(rng.integers(0, volume, count), cells)
            cells = np.concatenate([cells, extra])[:count]
        cells.sort()
        grid = np.stack(np.unravel_index(cells, (resolution,) * dimension), 1)
        out.append(np.concatenate([np.full((count, 1), b), grid], 1))
    return np.concatenate(out).astype(np.int32)


def neighbours_per_site(coordinates, resolution):
    """Mean number of other active sites in each site's 3^D neighbourhood
    (uniform random sites have almost none, which flatters a sparse kernel)."""
    d = coordinates.shape[1] - 1
    keys = np.ravel_multi_index(coordinates.T.astype(np.int64),
                                (coordinates[:, 0].max() + 1,) + (resolution,) * d)
    keys_set = np.sort(keys)
    total = 0
    for offset in np.stack(np.meshgrid(*[[-1, 0, 1]] * d, indexing="ij"), -1).reshape(-1, d):
        if not offset.any():
            continue
        moved = coordinates[:, 1:] + offset
        ok = np.all((moved >= 0) & (moved < resolution), 1)
        k = np.ravel_multi_index(np.concatenate([coordinates[ok, :1], moved[ok]], 1).T
                                 .astype(np.int64),
                                 (coordinates[:, 0].max() + 1,) + (resolution,) * d)
        pos = np.searchsorted(keys_set, k)
        pos[pos >= len(keys_set)] = 0
        total += int(np.sum(keys_set[pos] == k))
    return total / max(len(coordinates), 1)

