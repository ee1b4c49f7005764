"""Seeded fuzzing of every public entry point and the raw ops (cases in
fuzz_cases.py), each case in a child process that runs under a memory cap.

A finding is a crash, a hang, an exception other than InvalidArgumentError
/ ValueError / TypeError, a ResourceExhaustedError where the case did not
explicitly ask for a large output, or the custom ops and the pure-TF
reference path disagreeing (one refuses what the other accepts, or their
results differ). The default run does FUZZ_CASES cases per entry point
(CI); the slow run does FUZZ_SLOW_CASES (at least 10,000 cases in all):

    python -m pytest tests/test_fuzz.py -m slow -s     # prints the counts
"""

import collections
import json
import os
import queue
import subprocess
import sys
import threading

import pytest

from sparse_ops import _loader

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "200"))
FUZZ_SLOW_CASES = int(os.environ.get("FUZZ_SLOW_CASES", "1000"))
CASE_TIMEOUT_S = 60  # a case that takes longer is a hang
CLEAN = ("ok", "InvalidArgumentError", "ValueError", "TypeError")

sys.path.insert(0, HERE)
from fuzz_cases import ENTRIES  # noqa: E402  pylint: disable=wrong-import-position

pytestmark = pytest.mark.skipif(_loader.try_library() is None,
                                reason="the op library is not built")


def _finding(record):
    """Why a case's record is a finding, or None."""
    for side in ("outcome", "reference"):
        kind = record.get(side)
        if kind is None or kind in CLEAN:
            continue
        if kind == "ResourceExhaustedError" and record["explicit_large"]:
            continue
        key = "message" if side == "outcome" else "reference_message"
        return f"{side} {kind}: {record.get(key)}"
    if record.get("agree") is False:
        return (f"custom {record['outcome']} vs reference {record['reference']}: "
                f"{record.get('message', '')} | {record.get('reference_message', '')}")
    return None


def _lines(proc):
    """The child's stdout lines through a queue (None at the end), so that
    the parent can wait with a timeout."""
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return lines


def run_fuzz(entries, count, first=0):
    """Runs `count` cases of each entry, restarting the child after a crash
    or a hang. Returns (records, findings): findings as (case, reason)."""
    # oneDNN's allocator keeps freed blocks in a pool (and retries a failed
    # allocation for 10 s): the plain allocator lets the cap see each case.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0",
               PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get(
                   "PYTHONPATH", ""))
    done, records, findings = set(), [], []
    while True:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fuzz_cases.py"), "--entries",
             ",".join(entries), "--first", str(first), "--count", str(count),
             "--skip", ",".join(sorted(done))],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        lines, running, finished = _lines(proc), None, False
        while not finished:
            try:  # start-up (importing TensorFlow) may take longer than a case
                line = lines.get(timeout=CASE_TIMEOUT_S * (1 if running else 3))
            except queue.Empty:
                proc.kill()
                findings.append((running or "start-up", "hang"))
                done.add(running)
                break
            if line is None:  # the child died
                break
            message = json.loads(line)
            if "start" in message:
                running = message["start"]
            elif message.get("done"):
                finished = True
            else:
                done.add(running)
                records.append(message)
                reason = _finding(message)
                if reason:
                    findings.append((running, reason))
                running = None
        proc.wait()
        if finished:
            return records, findings
        if running is None:
            findings.append(("start-up", f"child exited {proc.returncode}"))
            return records, findings
        if running not in done:
            findings.append((running, f"crash (exit {proc.returncode})"))
            done.add(running)


def _report(records, findings):
    kinds = collections.Counter(r["outcome"] for r in records)
    lines = [f"{len(records)} cases over {len({r['entry'] for r in records})} entry "
             f"points: {dict(sorted(kinds.items()))}",
             f"reference path compared in {sum('agree' in r for r in records)} cases",
             f"slowest case {max((r['seconds'] for r in records), default=0):.1f} s",
             f"{len(findings)} findings"]
    lines += [f"  {case}: {reason}" for case, reason in findings[:50]]
    return "\n".join(lines)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_fuzz_short(entry):
    records, findings = run_fuzz([entry], FUZZ_CASES)
    assert len(records) + len(findings) >= FUZZ_CASES, _report(records, findings)
    assert not findings, _report(records, findings)


@pytest.mark.slow
def test_fuzz_long():
    """At least 10,000 cases (other seeds than the short run)."""
    records, findings = run_fuzz(sorted(ENTRIES), FUZZ_SLOW_CASES, first=10**6)
    print("\n" + _report(records, findings))
    assert len(records) >= 10_000
    assert not findings, _report(records, findings)
