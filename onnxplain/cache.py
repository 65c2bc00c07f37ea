"""The process-wide caches: explanation graphs with their sessions, and normalised models.

An Explainer of a (model, method, output, inputs, providers) seen before takes the graph and session
built the first time; a model file or bytes seen before are not normalised again.  Both caches forget
their least recently used entries beyond a count and a size, and are safe to use from several threads.
"""
from __future__ import annotations

import threading

from .runtime import LRUCache

#: explanation graphs and their sessions, by (model digest, method, output, inputs, providers, threads)
GRAPHS = LRUCache(max_items=16, max_bytes=2 << 30)
#: normalised models, by the path (with its size and modification time) or the bytes they were read from
MODELS = LRUCache(max_items=8, max_bytes=1 << 30)
_LOCK = threading.Lock()
#: one lock per explanation graph being built: Explainers of the same graph wait for one build, others do not wait
_BUILDING: dict = {}


def cached_graph(key, build) -> tuple:
    """The cached ``(graph, session)`` of ``key``, built by ``build()`` once even when several threads ask
    at the same time; the cache's own lock is never held while a graph is built."""
    with _LOCK:
        found = GRAPHS.get(key)
        if found is not None:
            return found
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        with _LOCK:
            found = GRAPHS.get(key)
        if found is None:
            try:
                found = build()
                with _LOCK:     # the graph, and the session's copy of its weights
                    GRAPHS.put(key, found, 2 * found[0].ByteSize())
            finally:
                with _LOCK:
                    _BUILDING.pop(key, None)
    return found


def cached_model(key, make) -> tuple:
    """The cached ``(model, ...)`` tuple of ``key``, made by ``make()`` when missing (its size is the
    model's, the tuple's first item)."""
    with _LOCK:
        found = MODELS.get(key)
    if found is None:
        found = make()
        with _LOCK:
            MODELS.put(key, found, found[0].ByteSize())
    return found


def clear_cache() -> None:
    """Drop every cached explanation graph, session and normalised model (their memory is freed once no
    Explainer uses them any more)."""
    with _LOCK:
        GRAPHS.clear()
        MODELS.clear()
