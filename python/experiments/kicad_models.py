"""KiCad 3D component models, voxelized: the offline stand-in for ModelNet40
(docs/tutorials.md, "Data sources") in the shape experiments of the paper's Sec. 4.3-4.4."""

import hashlib
import os
import re
import subprocess

import numpy as np

from reporting import log, progress

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "sparse_ops")
KICAD_DEFAULT = ("Capacitor_THT", "Package_DIP", "Resistor_THT", "Inductor_THT",
                 "Crystal", "Package_TO_SOT_THT", "Diode_THT", "LED_THT",
                 "Connector_Dsub", "Package_BGA")
KICAD_DIR = os.path.join(CACHE, "kicad")
_MODELS = os.path.join(KICAD_DIR, "usr", "share", "kicad", "3dmodels")


def _kicad_extract(categories):
    """Extracts the .wrl files of the missing categories from the Debian
    package kicad-packages3d (downloaded once, 379 MB) into ~/.cache."""
    missing = [c for c in categories
               if not os.path.isdir(os.path.join(_MODELS, f"{c}.3dshapes"))]
    if not missing:
        return
    os.makedirs(KICAD_DIR, exist_ok=True)
    debs = [f for f in os.listdir(KICAD_DIR) if f.startswith("kicad-packages3d")
            and f.endswith(".deb")]
    if not debs:
        log(f"downloading the Debian package kicad-packages3d (379 MB) into {KICAD_DIR} ...")
        subprocess.run(["apt-get", "download", "kicad-packages3d"], cwd=KICAD_DIR, check=True,
                       stdout=subprocess.DEVNULL)
        debs = [f for f in os.listdir(KICAD_DIR) if f.endswith(".deb")]
    log(f"extracting {len(missing)} categories of .wrl models (about a minute) ...")
    patterns = [f"*/{c}.3dshapes/*.wrl" for c in missing]
    tar = subprocess.Popen(["dpkg", "--fsys-tarfile", debs[0]], cwd=KICAD_DIR,
                           stdout=subprocess.PIPE)
    subprocess.run(["tar", "x", "--wildcards"] + patterns, cwd=KICAD_DIR,
                   stdin=tar.stdout, check=True)
    tar.wait()


def read_wrl(path):
    """Triangles [F, 3, 3] of every IndexedFaceSet of a VRML2 file (polygons
    fan-triangulated; KiCad's files are flat lists of Shapes)."""
    text = open(path, encoding="utf-8", errors="replace").read()
    tris = []
    points = None
    for match in re.finditer(r"(point|coordIndex)\s*\[([^\]]*)\]", text):
        values = np.array(match.group(2).replace(",", " ").split(), float)
        if match.group(1) == "point":
            points = values.reshape(-1, 3)
            continue
        if points is None:
            continue
        faces = np.split(values.astype(np.int64), np.flatnonzero(values < 0) + 1)
        for face in faces:
            face = face[face >= 0]
            if len(face) >= 3 and face.max() < len(points):
                fan = np.stack([np.full(len(face) - 2, face[0]), face[1:-1], face[2:]], 1)
                tris.append(points[fan])
    return np.concatenate(tris) if tris else np.zeros((0, 3, 3))


def _triangles(path):
    """read_wrl, cached as float32 .npy beside the file (parsing is the slow
    part, and every resolution needs the same triangles)."""
    cached = path + ".tri.npy"
    if os.path.exists(cached):
        return np.load(cached).astype(np.float64)
    tris = read_wrl(path)
    np.save(cached, tris.astype(np.float32))
    return tris


def voxelize_mesh(triangles, resolution, rng, samples_per_cell=8):
    """Occupied cells (int [M, 3]) of the surface, scaled uniformly to fit
    the resolution^3 grid and centred."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    lo, hi = triangles.reshape(-1, 3).min(0), triangles.reshape(-1, 3).max(0)
    scale = (resolution - 1e-3) / max((hi - lo).max(), 1e-9)
    count = samples_per_cell * resolution ** 2 * 4
    if area.sum() <= 0:
        return np.zeros((0, 3), np.int32)
    tri = rng.choice(len(area), size=count, p=area / area.sum())
    u, v = rng.random((2, count))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    pts = a[tri] + u[:, None] * (b - a)[tri] + v[:, None] * (c - a)[tri]
    offset = (resolution - (hi - lo) * scale) / 2  # centre in the grid
    cells = np.floor((pts - lo) * scale + offset).astype(np.int32)
    cells = np.clip(cells, 0, resolution - 1)
    return np.unique(cells, axis=0)


def kicad_shapes(resolution, categories=KICAD_DEFAULT, per_class=40, seed=0,
                 test_fraction=0.2):
    """KiCad component models voxelized at resolution^3 (occupancy), a
    stratified split. Returns (x_train, y_train, x_test, y_test, categories),
    x as float32 [n, r, r, r]. Cached as .npz in ~/.cache/sparse_ops."""
    categories = tuple(categories)
    digest = hashlib.sha1(" ".join(categories).encode()).hexdigest()[:10]
    key = f"kicad_{resolution}_{per_class}_{seed}_{digest}.npz"
    path = os.path.join(CACHE, key)
    if os.path.exists(path):
        data = np.load(path)
        cells, labels, splits = data["cells"], data["labels"], data["splits"]
    else:
        _kicad_extract(categories)
        rng = np.random.default_rng(seed)
        files = []
        for label, cat in enumerate(categories):
            folder = os.path.join(_MODELS, f"{cat}.3dshapes")
            names = sorted(f for f in os.listdir(folder) if f.endswith(".wrl"))
            pick = rng.permutation(len(names))[:per_class]
            files += [(os.path.join(folder, names[i]), label) for i in sorted(pick)]
        cells, labels, splits = [], [], [0]
        for file, label in progress(files, desc=f"voxelizing KiCad models at {resolution}^3",
                                    unit="model"):
            tris = _triangles(file)
            if len(tris) == 0:
                continue
            occupied = voxelize_mesh(tris, resolution, rng)
            cells.append(occupied)
            labels.append(label)
            splits.append(splits[-1] + len(occupied))
        cells, labels, splits = np.concatenate(cells), np.array(labels), np.array(splits)
        os.makedirs(CACHE, exist_ok=True)
        np.savez_compressed(path, cells=cells, labels=labels, splits=splits)
    x = np.zeros((len(labels),) + (resolution,) * 3, np.float32)
    for i in range(len(labels)):
        c = cells[splits[i]:splits[i + 1]]
        x[i][tuple(c.T)] = 1.0
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, max(int(round(test_fraction * len(idx))), 1), replace=False)] = True
    train, test = rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))
    return (x[train], labels[train].astype(np.int32), x[test],
            labels[test].astype(np.int32), categories)
