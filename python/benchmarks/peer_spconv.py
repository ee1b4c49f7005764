#!/usr/bin/env python3
"""Peer benchmark: spconv (CPU) on the shared sphere-shell workload.

Standalone: runs in a separate venv with torch + spconv and imports neither
TensorFlow nor sparse_ops. Set one up outside the repository:

    python3 -m venv /work/venvs/spconv
    /work/venvs/spconv/bin/pip install torch==2.13.0 spconv
    /work/venvs/spconv/bin/python python/benchmarks/peer_spconv.py [--verify] [--check out.npy]

Workload (docs/benchmarks.md, "Workload"): 4,000,000 random unit vectors
(default_rng(0).normal), normalised, times 75, floored to int32, +76, unique
rows -> 100,147 sites in a 152^3 grid, batch 0. Features float32 [N, 64] from
default_rng(1).standard_normal; kernel [27, 64, 64] from
default_rng(2).standard_normal * 0.05, where offset k is row-major over
(dx, dy, dz) in -1..1 and kernel[k] is [C_in, C_out], i.e.
kernel.reshape(3, 3, 3, 64, 64) is the Keras Conv3D layout
[k0, k1, k2, C_in, C_out]. The submanifold output is

    out[o] = sum_k features[site(o) + offset_k] @ kernel[k]

(cross-correlation, as Keras). spconv's weight is [O, k0, k1, k2, I], so it
gets kernel.reshape(3, 3, 3, 64, 64).transpose(4, 0, 1, 2, 3).

spconv must run with one thread: with two, its CPU gather/GEMM/scatter path
returns wrong rows (docs/benchmarks.md, "The peers on this workload").
--threads exists to reproduce that.
Its CPU backward also needs a one-line shim with a CPU-only torch (see
get_current_stream below); the shim touches no arithmetic.

Prints one JSON line with medians in milliseconds (minima under "min_ms"):
  subm_ms         SubMConv3d 3x3x3 64->64, no bias, including the rulebook
                  (a new SparseConvTensor each call, so nothing is cached)
  subm_cached_ms  the same with the rulebook reused (same indice_key)
  stride2_ms      SparseConv3d 3x3x3 stride 2 padding 1, including its rulebook
  fwd_bwd_ms      forward + backward (grad of features and of the weight) of
                  the submanifold conv, including the rulebook
  fwd_bwd_cached_ms  the same with the rulebook cached
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

NUM_POINTS = 4_000_000
RADIUS = 75
SHIFT = 76
GRID = 152
CHANNELS = 64


def make_workload():
    v = np.random.default_rng(0).normal(size=(NUM_POINTS, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    coords = np.floor(v * RADIUS).astype(np.int32) + SHIFT
    coords = np.unique(coords, axis=0)  # sorted row-major (x, y, z)
    n = coords.shape[0]
    feats = np.random.default_rng(1).standard_normal(
        (n, CHANNELS)).astype(np.float32)
    kernel = (np.random.default_rng(2).standard_normal(
        (27, CHANNELS, CHANNELS)) * 0.05).astype(np.float32)
    return coords, feats, kernel


def offsets_3x3x3():
    r = np.arange(-1, 2)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def neighbour_pairs(coords):
    """Per offset k: (out_rows, in_rows) with coords[in] == coords[out] + d_k."""
    def key(c):
        c = c.astype(np.int64)
        return (c[:, 0] * GRID + c[:, 1]) * GRID + c[:, 2]

    keys = key(coords)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    pairs = []
    for d in offsets_3x3x3():
        nb = coords + d
        inside = np.all((nb >= 0) & (nb < GRID), axis=1)
        nk = key(np.where(inside[:, None], nb, 0))
        pos = np.minimum(np.searchsorted(sorted_keys, nk), len(keys) - 1)
        hit = inside & (sorted_keys[pos] == nk)
        pairs.append((np.nonzero(hit)[0], order[pos[hit]]))
    return pairs


def reference_subm(pairs, feats, kernel):
    """Exact float64 submanifold 3x3x3 conv, out[o] = sum_k f[o + d_k] @ W[k]."""
    f = feats.astype(np.float64)
    out = np.zeros((f.shape[0], kernel.shape[2]), np.float64)
    for k, (o_rows, i_rows) in enumerate(pairs):
        out[o_rows] += f[i_rows] @ kernel[k].astype(np.float64)
    return out


def reference_grads(pairs, feats, kernel, grad_out):
    """float64 d(sum(out * grad_out)) / d(feats) and / d(kernel)."""
    f = feats.astype(np.float64)
    g = grad_out.astype(np.float64)
    gf = np.zeros_like(f)
    gw = np.zeros(kernel.shape, np.float64)
    for k, (o_rows, i_rows) in enumerate(pairs):
        np.add.at(gf, i_rows, g[o_rows] @ kernel[k].astype(np.float64).T)
        gw[k] = f[i_rows].T @ g[o_rows]
    return gf, gw


def time_ms(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), ts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions (>= 5)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; >1 gives wrong rows in spconv 2.3.8")
    ap.add_argument("--check", metavar="OUT.npy",
                    help="save the submanifold output [N, 64] float32, rows in site order")
    ap.add_argument("--verify", action="store_true",
                    help="compare against an inline float64 numpy reference")
    ap.add_argument("--all-times", action="store_true",
                    help="also report every repetition's time")
    args = ap.parse_args()
    if args.reps < 5:
        ap.error("--reps must be >= 5")

    import torch
    torch.set_num_threads(args.threads)
    import spconv
    import spconv.pytorch as spconv_torch
    import spconv.pytorch.ops as spconv_ops

    if not torch.cuda.is_available():
        # spconv 2.3.8's indice_conv_backward calls get_current_stream() ->
        # torch.cuda.current_stream() before it branches to its CPU path, which
        # never uses the stream; with a CPU-only torch that raises "Torch not
        # compiled with CUDA enabled". Hand it a null stream instead.
        spconv_ops.get_current_stream = lambda: 0

    coords, feats_np, kernel_np = make_workload()
    n = coords.shape[0]

    indices = torch.from_numpy(
        np.concatenate([np.zeros((n, 1), np.int32), coords], axis=1)).contiguous()
    feats = torch.from_numpy(feats_np)
    spatial = [GRID, GRID, GRID]
    w_spconv = np.ascontiguousarray(
        kernel_np.reshape(3, 3, 3, CHANNELS, CHANNELS).transpose(4, 0, 1, 2, 3))

    subm = spconv_torch.SubMConv3d(CHANNELS, CHANNELS, 3, bias=False,
                                   indice_key="subm0")
    stride2 = spconv_torch.SparseConv3d(CHANNELS, CHANNELS, 3, stride=2,
                                        padding=1, bias=False)
    assert tuple(subm.weight.shape) == w_spconv.shape, subm.weight.shape
    with torch.no_grad():
        subm.weight.copy_(torch.from_numpy(w_spconv))
        stride2.weight.copy_(torch.from_numpy(w_spconv))

    def fresh(f=feats):
        return spconv_torch.SparseConvTensor(f, indices, spatial, 1)

    # A tensor whose indice_dict holds the subm rulebook under "subm0".
    with torch.no_grad():
        cached = subm(fresh())
    cached_in = cached.replace_feature(feats)

    results = {}
    mins = {}
    samples = {}
    load_before = os.getloadavg()[0]

    def run_subm():
        with torch.no_grad():
            return subm(fresh()).features

    def run_subm_cached():
        with torch.no_grad():
            return subm(cached_in).features

    s2_sites = []

    def run_stride2():
        with torch.no_grad():
            out = stride2(fresh())
        s2_sites.append(out.indices.shape[0])
        return out.features

    grad_out = torch.from_numpy(
        np.random.default_rng(3).standard_normal((n, CHANNELS)).astype(np.float32))

    def run_fwd_bwd(use_cache):
        f = feats.clone().requires_grad_(True)
        subm.weight.grad = None
        x = cached_in.replace_feature(f) if use_cache else fresh(f)
        out = subm(x)
        out.features.backward(grad_out)
        return f.grad, subm.weight.grad

    for name, fn in [("subm_ms", run_subm),
                     ("subm_cached_ms", run_subm_cached),
                     ("stride2_ms", run_stride2),
                     ("fwd_bwd_ms", lambda: run_fwd_bwd(False)),
                     ("fwd_bwd_cached_ms", lambda: run_fwd_bwd(True))]:
        med, ts = time_ms(fn, args.reps, args.warmup)
        results[name] = round(med, 2)
        mins[name] = round(min(ts), 2)
        samples[name] = [round(t, 1) for t in ts]

    out = run_subm().numpy()
    out_cached = run_subm_cached().numpy()

    line = {
        "library": "spconv",
        "version": spconv.__version__,
        "torch": torch.__version__,
        "threads": args.threads,
        "sites": int(n),
        **results,
        "stride2_sites": int(s2_sites[-1]),
        "reps": args.reps,
        "min_ms": mins,
        # 1-minute load average before / after timing: on a shared 2-core
        # machine anything much above `threads` means the medians are inflated.
        "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if args.all_times:
        line["samples_ms"] = samples

    if args.check:
        np.save(args.check, out.astype(np.float32))
        line["check"] = args.check

    if args.verify:
        pairs = neighbour_pairs(coords)
        ref = reference_subm(pairs, feats_np, kernel_np)
        scale = float(np.abs(ref).max())
        tol = 1e-4 * scale
        verify = {"pairs": int(sum(len(o) for o, _ in pairs)),
                  "ref_max_abs": round(scale, 4)}
        for label, arr in [("subm", out), ("subm_cached", out_cached)]:
            err = np.abs(arr.astype(np.float64) - ref)
            row_err = err.max(axis=1)
            verify[label] = {
                "max_abs_err": float(f"{err.max():.3e}"),
                "max_rel_err": float(f"{err.max() / scale:.3e}"),
                "bad_rows": int((row_err > tol).sum()),
            }
        # Gradients, through the uncached path (fresh rulebook).
        gf, gw = run_fwd_bwd(False)
        ref_gf, ref_gw = reference_grads(pairs, feats_np, kernel_np,
                                         grad_out.numpy())
        # spconv's weight grad is [O, k0, k1, k2, I]; back to [27, I, O].
        gw = gw.numpy().transpose(1, 2, 3, 4, 0).reshape(27, CHANNELS, CHANNELS)
        for label, got, want in [("grad_features", gf.numpy(), ref_gf),
                                 ("grad_weight", gw, ref_gw)]:
            e = np.abs(got.astype(np.float64) - want).max()
            verify[label + "_max_rel_err"] = float(
                f"{e / np.abs(want).max():.3e}")
        verify["ok"] = (
            all(verify[k]["bad_rows"] == 0 for k in ("subm", "subm_cached"))
            and verify["grad_features_max_rel_err"] < 1e-4
            and verify["grad_weight_max_rel_err"] < 1e-4)
        line["verify"] = verify

    print(json.dumps(line))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
