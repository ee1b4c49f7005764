"""Kernel maps and output coordinates, cached by coordinate-tensor identity.

MinkowskiEngine keeps kernel maps in a coordinate manager; torchsparse on the
tensor. Keras rebuilds our SparseTensor namedtuple from its fields, so the
cache here is keyed by the identity of the coordinates tensors themselves,
which layers pass on unchanged: every layer that shares coordinates and
geometry reuses one map, in eager mode and while tracing a graph.

Lifetimes: in eager mode entries live in a module dict and are dropped when a
key tensor dies (weak references). While tracing, entries live on the graph
being built, so they go away with it; a symbolic tensor never reaches another
graph.
"""

import weakref

import tensorflow as tf

_eager_entries = {}
_GRAPH_ATTRIBUTE = "_sparse_ops_cache"


def _entries():
    if tf.executing_eagerly():
        return _eager_entries
    graph = tf.compat.v1.get_default_graph()
    entries = getattr(graph, _GRAPH_ATTRIBUTE, None)
    if entries is None:
        entries = {}
        setattr(graph, _GRAPH_ATTRIBUTE, entries)
    return entries


def _key(tensors, extra):
    return (tuple(id(t) for t in tensors), extra)


def lookup(tensors, extra):
    """The value stored for (tensors, extra), or None."""
    entries = _entries()
    key = _key(tensors, extra)
    entry = entries.get(key)
    if entry is None:
        return None
    refs, value = entry
    if any(r() is not t for r, t in zip(refs, tensors)):
        entries.pop(key, None)  # an id was reused by a new tensor
        return None
    return value


def store(tensors, extra, value):
    """Remembers value for (tensors, extra) while all the tensors live.

    The value must not refer to the key tensors (that would keep them alive).
    """
    entries = _entries()
    key = _key(tensors, extra)

    def drop(_, key=key, entries=entries):  # module globals may be gone at exit
        entries.pop(key, None)

    try:
        refs = tuple(weakref.ref(t, drop) for t in tensors)
    except TypeError:  # not weak-referenceable: do not cache
        return value
    entries[key] = (refs, value)
    return value


def clear():
    """Forgets every cached eager map (for tests and benchmarks)."""
    _eager_entries.clear()
