"""Measuring: median wall time, peak resident memory, and running each
measured configuration in a process of its own (run_child / run_variants,
the child answering with emit) so that earlier work does not hide its peak."""

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import numpy as np

from reporting import log, progress

# The repository root, on the PYTHONPATH of the child processes.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return -1


def reset_peak_rss():
    """Restarts the peak-RSS count of this process (Linux clear_refs = 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_bytes():
    return 1024 * _status_kb("VmRSS")


def peak_rss_bytes():
    return 1024 * _status_kb("VmHWM")


class PeakMemory:
    """Peak resident memory of a code block above what was resident before it:
    `with PeakMemory() as m: ...; m.bytes`. Run each measured configuration in
    its own process (`run_child`) so that freed-but-cached pages of earlier
    work do not hide its peak."""

    def __enter__(self):
        reset_peak_rss()
        self.baseline = rss_bytes()
        self.bytes = None
        return self

    def __exit__(self, *exc):
        self.bytes = peak_rss_bytes() - self.baseline
        return False


def run_child(script, args, timeout=None, quiet=False):
    """Runs `python script *args` and returns the dict it printed as its last
    JSON line, or {"error": ...} when it failed (e.g. out of memory). The
    child's stderr (its progress bars) passes through unless `quiet`."""
    cmd = [sys.executable, script] + [str(a) for a in args]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE if quiet else None, text=True,
                             timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or "").strip().splitlines()[-2:]
        return {"error": f"exit code {out.returncode}" + (": " + " | ".join(tail)
                                                          if tail else "")}
    return json.loads(lines[-1])


def run_variants(script, variants, child_args, jobs=1):
    """Runs `script --variant V *child_args` for every variant, one process
    each (see run_child), `jobs` at a time, with a progress bar; returns
    {variant: result} in the order of `variants` for those that succeeded,
    and exits when none did. Variants run side by side share the CPU
    equally, so their run times stay comparable with each other."""
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(run_child, script, ["--variant", v] + list(child_args)): v
                   for v in variants}
        for future in progress(concurrent.futures.as_completed(futures),
                               total=len(futures), desc="variants", unit="net"):
            variant, result = futures[future], future.result()
            if "error" in result:
                log(f"{variant}: failed ({result['error']})")
                continue
            results[variant] = result
    if not results:
        sys.exit("every variant failed")
    return {v: results[v] for v in variants if v in results}


def emit(result):
    """The child's side of `run_child`."""
    print(json.dumps(result), flush=True)



def median_seconds(fn, repeats, warmup=1):
    """Median wall time of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def machine_note():
    """One line on where the numbers were taken (load matters on a shared box)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs, load average {load:.1f} at start"

