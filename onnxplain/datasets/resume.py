"""Resuming a run: what the run is (fingerprints of its arguments), and which of its batches are on disk.

A small manifest beside the output (``<out>.manifest.json``) records the run's identity (model digest,
method, parameters, targets, source, batch size, format) and each batch once its data is on disk; it is
replaced atomically (:func:`~onnxplain.datasets.stores.write_durably`).  A run started again with the same
identity skips the batches recorded; another identity is refused unless ``overwrite=True``.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .sources import RowTargets, is_array_like
from .stores import Output, write_durably

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1


class Manifest:
    """The record of a run beside its output: what the run is, and which batches are durably written."""

    def __init__(self, path: str, identity: dict, done: dict, complete: bool = False):
        self.path, self.identity, self.batches, self.complete = path, identity, done, complete

    @property
    def done(self) -> dict:
        """Batch index -> (first row, end row) of the batches on disk."""
        return self.batches

    @staticmethod
    def path_of(output: Output) -> str:
        """Where the manifest of ``output`` lies: ``<out>.manifest.json``."""
        return output.path + MANIFEST_SUFFIX

    @classmethod
    def open(cls, output: Output, identity: dict, overwrite: bool) -> "Manifest":
        """The manifest of a run of ``identity`` into ``output``: the one on disk when it records the same run,
        a new one when nothing is there (or ``overwrite``); refused when the output holds another run, or
        exists without a manifest."""
        path = cls.path_of(output)
        if overwrite:
            if os.path.exists(path):
                os.remove(path)
            return cls(path, identity, {})
        if os.path.exists(path):
            try:
                with open(path) as f:
                    data = json.load(f)
                found = data["run"]
                done = {int(k): tuple(v) for k, v in data["done"].items()}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path!r} is not a manifest of explain_dataset ({e}); pass overwrite=True to "
                                 f"start again") from e
            if found != identity:
                diff = sorted(k for k in set(found) | set(identity) if found.get(k) != identity.get(k))
                raise ValueError(f"{output.path!r} holds the results of another run (its manifest differs in "
                                 f"{', '.join(diff)}); pass overwrite=True (--overwrite) to replace them, or write "
                                 f"elsewhere")
            return cls(path, identity, done, bool(data.get("complete")))
        if output.exists():
            raise ValueError(f"{output.path!r} exists and has no manifest of explain_dataset beside it; pass "
                             f"overwrite=True to replace it")
        return cls(path, identity, {})

    def check_rows(self, index: int, start: int, stop: int) -> None:
        """Batch ``index`` of this run covers the rows it covered in the run being resumed."""
        if self.batches[index] != (start, stop):
            raise ValueError(f"batch {index} covers rows {start}:{stop} but the run being resumed wrote rows "
                             f"{self.batches[index][0]}:{self.batches[index][1]}: the source yields other batches")

    def record(self, index: int, start: int, stop: int) -> None:
        """Batch ``index`` (rows ``start:stop``) is on disk: say so, durably."""
        self.record_batches({index: (start, stop)})

    def record_batches(self, spans: dict) -> None:
        """Several batches (index -> (first row, end row)) are on disk: say so in one durable write."""
        self.batches.update(spans)
        self._write()

    def rows_done(self) -> int:
        return max((stop for _, stop in self.batches.values()), default=0)

    def finish(self) -> None:
        """The run is complete."""
        self.complete = True
        self._write()

    def remove(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)

    def _write(self) -> None:
        data = {"version": MANIFEST_VERSION, "run": self.identity, "complete": self.complete,
                "done": {str(k): list(v) for k, v in sorted(self.batches.items())}}
        write_durably(self.path, json.dumps(data, indent=1).encode())


# ---------------------------------------------------------------------- identity of a run
def run_identity(ex, params: dict, *, targets, source: dict, batch_size, kind: str) -> dict:
    """What a run of ``ex`` is, as its manifest records it: the model's digest, the method, the explained
    output, the attributed tensors, the fingerprints of ``params`` (but ``progress``) and ``targets`` (already
    a fingerprint), the ``source``'s description, the ``batch_size`` and the output's ``kind``."""
    shown = {k: v for k, v in params.items() if k != "progress"}
    return {
        "model": ex.digest,
        "method": ex.method.name,
        "output": ex.output,
        "attributed": [[p.key, p.tensor] for p in ex.spec.points],
        "params": fingerprint(shown),
        "targets": targets,
        "source": source,
        "batch_size": batch_size,
        "format": kind,
    }


def fingerprint(value):
    """A JSON-able, exact description of a parameter value (arrays by content digest)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, np.ndarray) or is_array_like(value):
        a = np.ascontiguousarray(np.asarray(value))
        return {"array": a.dtype.str, "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
    return repr(value)


def fingerprint_targets(targets: RowTargets) -> dict:
    """The targets of a streamed run: one per row by the digest of their rows, else the one target."""
    if targets.per_row is not None:
        return {"per_row": "target_weights" if targets.weights is not None else "target",
                "digest": digest_rows(targets.per_row)}
    return {"target": fingerprint(targets.target)}


def digest_rows(values, rows_at_a_time: int = 65536) -> str:
    """The sha256 of an array-like's rows, read ``rows_at_a_time`` at a time (it may be larger than memory)."""
    h = hashlib.sha256()
    n = int(np.shape(values)[0])
    for start in range(0, n, rows_at_a_time):
        chunk = np.ascontiguousarray(np.asarray(values[start:start + rows_at_a_time]))
        h.update(str((chunk.dtype.str, chunk.shape[1:])).encode())
        h.update(chunk.tobytes())
    return h.hexdigest()


def check_reproducible(params: dict) -> None:
    """A resumed run repeats the random numbers of the batches it recomputes: only from an int seed."""
    seed = params.get("seed")
    if isinstance(seed, np.random.Generator):
        raise ValueError("explain_dataset needs an int seed (a numpy Generator cannot be replayed when a run "
                         "resumes)")
