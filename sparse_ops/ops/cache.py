"""Kernel maps and output coordinates, cached by coordinate-tensor identity.

MinkowskiEngine keeps kernel maps in a coordinate manager; torchsparse on the
tensor. Keras rebuilds our SparseTensor namedtuple from its fields, so the
cache here is keyed by the identity of the coordinates tensors themselves,
which layers pass on unchanged: every layer that shares coordinates and
geometry reuses one map, in eager mode and while tracing a graph. Entries die
with their key tensors (weak references).
"""

import weakref

import tensorflow as tf

_entries = {}


def _graph_key():
    # Symbolic tensors belong to one graph; never hand one to another.
    return None if tf.executing_eagerly() else id(tf.compat.v1.get_default_graph())


def _key(tensors, extra):
    return (tuple(id(t) for t in tensors), _graph_key(), extra)


def lookup(tensors, extra):
    """The value stored for (tensors, extra), or None."""
    key = _key(tensors, extra)
    entry = _entries.get(key)
    if entry is None:
        return None
    refs, value = entry
    if any(r() is not t for r, t in zip(refs, tensors)):
        _entries.pop(key, None)  # an id was reused by a new tensor
        return None
    return value


def store(tensors, extra, value):
    """Remembers value for (tensors, extra) while all the tensors live."""
    key = _key(tensors, extra)

    def drop(_, key=key, entries=_entries):  # module globals may be gone at exit
        entries.pop(key, None)

    try:
        refs = tuple(weakref.ref(t, drop) for t in tensors)
    except TypeError:  # not weak-referenceable: do not cache
        return value
    _entries[key] = (refs, value)
    return value


def clear():
    """Forgets every cached map (for tests and benchmarks)."""
    _entries.clear()
