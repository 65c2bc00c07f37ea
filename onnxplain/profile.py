"""Where an explanation's time goes: onnxruntime's profiler over the explanation graph, and its floor.

:func:`profile` runs one method on one batch the way :meth:`Explainer.explain`
does, and reports:

- the call's wall time (median of ``repeats`` calls after a warm-up) and the
  share of it spent outside ``session.run`` (Python: planning, feeds, folding);
- the *floor*: the time onnxruntime takes for a plain forward pass of the model
  over the same expanded batch (for integrated gradients with 50 steps on 16
  rows, forwards over 16 x 50 rows, cut into the same runs), measured in the
  same process; the floor ratio is the call's time over it (a gradient costs
  about two forwards, so a gradient method near 2 is at its floor);
- the time per op type and per node of one profiled call (onnxruntime's own
  profiler, ``SessionOptions.enable_profiling``), largest first;
- the peak resident memory the first call adds to the process (onnxruntime's
  arena, batches and outputs; later calls reuse the arena).

The command line's ``onnxplain profile MODEL --method M`` prints
:meth:`Profile.report`.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from .api import Explainer
from .prepare import made_up_inputs
from .runtime import Session
from .targets import predicted_target

#: size given to a symbolic non-batch dimension (a sequence length) when inputs are made up


@dataclass(frozen=True)
class OpTime:
    """Time onnxruntime spent in one node, or in every node of one op type, during the profiled call."""

    name: str
    op_type: str
    microseconds: float
    calls: int


@dataclass
class Profile:
    """What :func:`profile` measured (times in seconds, memory in bytes)."""

    method: str
    batch: int
    rows: int
    runs: int
    seconds: float
    inside_seconds: float
    floor_seconds: float
    peak_bytes: int | None
    op_types: list[OpTime] = field(default_factory=list)
    nodes: list[OpTime] = field(default_factory=list)

    @property
    def floor_ratio(self) -> float:
        """The call's time over the floor (a plain forward over the same expanded batch)."""
        return self.seconds / self.floor_seconds if self.floor_seconds > 0 else float("inf")

    @property
    def outside_share(self) -> float:
        """Share of the call's time spent outside ``session.run``."""
        return max(0.0, self.seconds - self.inside_seconds) / self.seconds if self.seconds > 0 else 0.0

    def report(self, top: int = 15) -> str:
        """A text report: summary lines, then the op types and the ``top`` slowest nodes."""
        kernel = sum(t.microseconds for t in self.op_types) or 1.0
        memory = "unknown" if self.peak_bytes is None else f"{self.peak_bytes / 2 ** 20:.1f} MiB"
        lines = [f"{self.method} on {self.batch} row(s): {self.rows} forward rows in {self.runs} run(s)",
                 f"  call        {self.seconds * 1e3:10.2f} ms  (median; {self.outside_share:.1%} outside "
                 f"session.run)",
                 f"  floor       {self.floor_seconds * 1e3:10.2f} ms  (plain forward over the same rows)",
                 f"  floor ratio {self.floor_ratio:10.2f}",
                 f"  peak memory {memory} added by the first call (arena and buffers)",
                 "", "time per op type (one profiled call):"]
        lines += [f"  {t.op_type:<28}{t.microseconds / 1e3:10.2f} ms {t.microseconds / kernel:7.1%}"
                  f"  {t.calls} node run(s)" for t in self.op_types]
        lines += ["", f"slowest nodes (top {top}):"]
        lines += [f"  {t.name:<40.40} {t.op_type:<20}{t.microseconds / 1e3:10.2f} ms {t.microseconds / kernel:7.1%}"
                  for t in self.nodes[:top]]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The numbers as plain JSON types."""
        return {"method": self.method, "batch": self.batch, "rows": self.rows, "runs": self.runs,
                "seconds": self.seconds, "inside_seconds": self.inside_seconds, "outside_share": self.outside_share,
                "floor_seconds": self.floor_seconds, "floor_ratio": self.floor_ratio, "peak_bytes": self.peak_bytes,
                "op_types": [t.__dict__ for t in self.op_types], "nodes": [t.__dict__ for t in self.nodes]}


def profile(model, inputs=None, method: str = "saliency", target=None, *, batch: int = 8, repeats: int = 3,
            output: str | None = None, attribute=None, layer: str | None = None, threads: int | None = None,
            providers=None, noise_tunnel: str | None = None, batch_axes: dict | None = None,
            batch_size: int | None = None, memory_budget=None, params: dict | None = None, **more) -> Profile:
    """Profile ``method`` on ``model``: timings, floor ratio, op and node times, peak memory.

    inputs: an array or a dict by input name; default: made-up rows
        (:func:`made_up_inputs`, ``batch`` of them).
    target: Captum's forms; default: each row's largest output (or None for an
        output with one value per row).  The target does not change the cost.
    repeats: timed calls after one warm-up; the median is reported.
    attribute: the inputs to attribute (``Explainer``'s ``inputs``).
    noise_tunnel, batch_axes, batch_size, memory_budget: those of :class:`~onnxplain.Explainer`; inputs
        (given or made up) are in their own layout, as ``explain`` takes them.
    params, more: the method's parameters (``n_steps=50``, ``nt_samples=10``...); ``params`` as a dict takes
        the ones named like this function's own arguments (integrated gradients' ``method``).
    """
    params = {**(params or {}), **more}
    if not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    ex = Explainer(model, method, output=output, inputs=attribute, layer=layer, providers=providers, threads=threads,
                   noise_tunnel=noise_tunnel, batch_axes=batch_axes, batch_size=batch_size, memory_budget=memory_budget)
    x = made_up_inputs(ex.model, batch, batch_axes=ex.batch_axes) if inputs is None else inputs
    feeds = ex.check_inputs(x)                                   # batch first, for the forward floor
    first = ex.forward_session().run(ex.runner.row_slice(feeds, 0, 1), [ex.output])[ex.output]
    if target is None and _row_values(first) > 1:
        target = predicted_target(ex.forward(x)[ex.output])
    cost = ex.estimate(x, target, **params)
    call = TimedCall(ex, x, target, params)

    peak = peak_added(call)                                       # warm-up: arena and kernels settle
    timings = [call() for _ in range(repeats)]
    seconds = statistics.median(t[0] for t in timings)
    inside = statistics.median(t[1] for t in timings)
    floor = forward_floor(ex, feeds, cost.rows, min(cost.rows_per_run, ex.spec.batch_size or cost.rows_per_run),
                          repeats)
    op_types, nodes = _op_times(ex, call)
    return Profile(ex.method.name, ex.rows(feeds), cost.rows, cost.runs, seconds, inside, floor, peak,
                   op_types, nodes)


def forward_floor(ex, inputs: dict, rows: int, rows_per_run: int, repeats: int = 3) -> float:
    """Median seconds of a plain forward of ``ex``'s model over ``rows`` rows (the inputs' rows repeated;
    ``inputs`` batch first, as :meth:`Explainer._check_inputs` gives them; unbatched inputs fed whole),
    cut into runs of at most ``rows_per_run`` rows as the explanation's own runs are."""
    n = ex.rows(inputs)
    reps = -(-max(1, rows_per_run) // n)
    big = {k: v if k in ex.spec.unbatched else np.ascontiguousarray(np.concatenate([v] * reps)[:rows_per_run])
           for k, v in inputs.items()}
    sizes = [rows_per_run] * (rows // max(1, rows_per_run)) + ([rows % rows_per_run] if rows % rows_per_run else [])
    chunks = [ex.runner.row_slice(big, 0, s) for s in sizes]
    session = ex.forward_session()
    wanted = [ex.output]

    def once() -> float:
        t0 = time.perf_counter()
        for chunk in chunks:
            session.run(chunk, wanted)
        return time.perf_counter() - t0

    once()
    return statistics.median(once() for _ in range(repeats))


class TimedCall:
    """One explanation call, timed as a whole and inside ``session.run``; returns (wall, inside) seconds."""

    def __init__(self, ex, x, target, params):
        self.ex, self.x, self.target, self.params = ex, x, target, params

    def __call__(self, session=None) -> tuple[float, float]:
        ex = self.ex
        inner = session or ex.session
        spent = [0.0]

        class Timed:   # the session, its runs timed
            def __getattr__(self, name):
                return getattr(inner, name)

            def run(self, feeds, outputs=None):
                t0 = time.perf_counter()
                try:
                    return inner.run(feeds, outputs)
                finally:
                    spent[0] += time.perf_counter() - t0

        shared = ex.runner
        ex.runner = shared.with_session(Timed())
        try:
            t0 = time.perf_counter()
            ex.explain(self.x, self.target, **self.params)
            return time.perf_counter() - t0, spent[0]
        finally:
            ex.runner = shared


def peak_added(call) -> int | None:
    """Bytes the process's resident memory rises above its size before ``call`` at the peak of the call
    (Linux: the high-water mark is reset first; None where that cannot be read).  On a first call this
    includes onnxruntime's arena, which later calls reuse."""
    before = _status_kib("VmRSS")
    if before is None or not _reset_peak():
        call()
        return None
    call()
    peak = _status_kib("VmHWM")
    return None if peak is None else max(0, peak - before) * 1024


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the process's resident high-water mark (Linux >= 4.0); whether it was."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _op_times(ex, call) -> tuple[list[OpTime], list[OpTime]]:
    """Per op type and per node kernel times of one call, from a profiled session over the same graph
    (after one warm-up call whose events are left out)."""
    with tempfile.TemporaryDirectory(prefix="onnxplain-profile-") as folder:
        session = Session(ex.graph, ex.providers, ex.threads, profile_prefix=os.path.join(folder, "trace"))
        runs = _count_runs(call, session)
        call(session)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    return summarise(events, skip_runs=runs)


def _count_runs(call, session) -> int:
    count = [0]

    class Counting:
        def __getattr__(self, name):
            return getattr(session, name)

        def run(self, feeds, outputs=None):
            count[0] += 1
            return session.run(feeds, outputs)

    call(Counting())
    return count[0]


def summarise(events: list[dict], skip_runs: int = 0) -> tuple[list[OpTime], list[OpTime]]:
    """Kernel times of an onnxruntime profiler trace, by op type and by node, largest first; events of the
    first ``skip_runs`` session runs (a warm-up) are left out."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    since = starts[skip_runs] if skip_runs < len(starts) else (starts[-1] if starts else 0)
    by_type: dict[str, list] = {}
    by_node: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < since:
            continue
        op = e.get("args", {}).get("op_name", "?")
        node = e["name"][:-len("_kernel_time")]
        for table, key in ((by_type, op), (by_node, node)):
            entry = table.setdefault(key, [op, 0.0, 0])
            entry[1] += float(e.get("dur", 0))
            entry[2] += 1
    op_types = sorted((OpTime(k, op, us, n) for k, (op, us, n) in by_type.items()), key=lambda t: -t.microseconds)
    nodes = sorted((OpTime(k, op, us, n) for k, (op, us, n) in by_node.items()), key=lambda t: -t.microseconds)
    return op_types, nodes


def _row_values(output: np.ndarray) -> int:
    return int(np.prod(output.shape[1:], dtype=np.int64))
