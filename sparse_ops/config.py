"""Which implementation the ops run: the compiled custom ops or pure TF.

``"custom"`` runs the C++ op library (an error if it cannot be loaded),
``"reference"`` the pure-TensorFlow reference path (the test oracle, and
ops that a stock TF Serving binary can run), ``"auto"`` (the default) the
custom ops when they load, else the reference path with a warning.

The environment variable ``SPARSE_OPS_IMPLEMENTATION`` sets the initial
choice; :func:`set_implementation` and the :func:`implementation` context
manager change it in code.
"""

import contextlib
import os

IMPLEMENTATIONS = ("auto", "custom", "reference")


def _check(name):
    if name not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    return name


_implementation = _check(os.environ.get("SPARSE_OPS_IMPLEMENTATION", "auto"))


def get_implementation():
    """The implementation chosen: "auto", "custom" or "reference"."""
    return _implementation


def set_implementation(name):
    """Chooses the implementation for ops built from now on."""
    global _implementation
    _implementation = _check(name)


@contextlib.contextmanager
def implementation(name):
    """Runs the ops built inside the block with the given implementation."""
    previous = get_implementation()
    set_implementation(name)
    try:
        yield
    finally:
        set_implementation(previous)


def use_reference():
    """True when ops should take the pure-TF path now."""
    if _implementation == "reference":
        return True
    from sparse_ops import _loader  # pylint: disable=import-outside-toplevel
    if _implementation == "custom":
        _loader.library()  # raises with the reason when it cannot load
        return False
    return _loader.try_library() is None
