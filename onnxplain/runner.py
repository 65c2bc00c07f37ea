"""The contract between a method and the runtime.

A method declares its explanation graph (:meth:`Method.build`), the parameter feeds of a call
(:meth:`Method.parts`, :meth:`Method.rows_split`) and how the runs' outputs reduce to attributions
(:meth:`Method.run`).  It runs nothing itself: the Explainer hands it a :class:`Runner`, which knows the
spec, the session, the memory budget and the cost of a row, and runs feeds through the session in
budgeted chunks of rows.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ModelError
from .methods.base import TARGET_WEIGHTS
from .runtime import RowCost, Session, rows_per_chunk
from .spec import Spec


class Runner:
    """Runs one explanation graph for one method: ``run_rows`` over all rows of a call, in the chunks of
    ``row_chunks``; ``run`` for one run (a perturbation method's own schedule).

    ``forward`` returns the model's plain forward session (built on first use): a failed run asks it
    whether the model takes several rows at all, to say when ``batch_size=1`` is the fix.
    """

    def __init__(self, method, spec: Spec, session: Session, memory_budget: int, row_cost: RowCost,
                 forward: Callable[[], Session]):
        self.method, self.spec, self.session = method, spec, session
        self.memory_budget, self.row_cost = memory_budget, row_cost
        self._forward = forward

    def with_session(self, session: Session) -> "Runner":
        """The same runner over another session of the same spec (a diagnostic graph built beside)."""
        return Runner(self.method, self.spec, session, self.memory_budget, self.row_cost, self._forward)

    def row_chunks(self, part: dict, n: int, row_bytes: int) -> list[tuple[int, int]]:
        """The ``[start, stop)`` input rows of each run of ``part``: as many rows as fit the memory budget
        once each expands into the method's rows (``row_bytes``: this call's :attr:`row_cost`)."""
        step = rows_per_chunk(row_bytes, self.method.expansion(part), n, self.memory_budget)
        step = min(step, self.method.rows_per_run(part, self.spec.batch_size) or step)
        return [(start, min(n, start + step)) for start in range(0, n, step)]

    def run_rows(self, feeds: dict, tw, part: dict, wanted, row_bytes: int) -> dict:
        """Run the graph with parameter feeds ``part`` over all rows, in the chunks of :meth:`row_chunks`;
        the ``wanted`` outputs with the chunks' rows concatenated."""
        chunks = []
        for start, stop in self.row_chunks(part, int(np.shape(tw)[0]), row_bytes):
            run = self.row_slice(feeds, start, stop)
            run[TARGET_WEIGHTS] = tw[start:stop]
            run.update(self.method.rows_split(part, start, stop))
            chunks.append(self.run(run, wanted))
        return {k: np.concatenate([c[k] for c in chunks], axis=0) for k in wanted}

    def run(self, feeds: dict, wanted) -> dict:
        """One run of the graph; a failure that only batches cause says to use ``batch_size``."""
        try:
            return self.session.run(feeds, wanted)
        except Exception as e:
            hint = self._batching_hint(feeds)
            if hint is None:
                raise
            raise ModelError(hint) from e

    def row_slice(self, feeds: dict, start: int, stop: int) -> dict:
        """Rows ``[start, stop)`` of the batched inputs (batch first here), unbatched inputs as they are."""
        return {k: v if k in self.spec.unbatched else v[start:stop] for k, v in feeds.items()}

    def first_row_repeated(self, feeds: dict, count: int) -> dict:
        """The model's inputs with the first row of each batched one repeated ``count`` times."""
        names = self.spec.carriers + self.spec.passthrough + self.spec.unbatched
        return {x: (feeds[x] if x in self.spec.unbatched else np.concatenate([feeds[x][:1]] * count))
                for x in names}

    def _batching_hint(self, feeds: dict) -> str | None:
        """The advice to use ``batch_size=1`` when a run failed with several rows and one row runs."""
        if self.spec.batch_size == 1:
            return None
        forward = self._forward()
        try:
            forward.run(self.first_row_repeated(feeds, 1))
        except Exception:
            return None      # not even one row runs: not a matter of batching
        try:
            forward.run(self.first_row_repeated(feeds, 2))
            return None      # the model takes two rows: the failure is the explanation graph's own
        except Exception:
            pass
        return ("the model fails on a run of several rows but runs on one row: it cannot take batches "
                "(control flow on a single-element condition, a state sized for one row...). Build the "
                "Explainer with batch_size=1 so that the model never sees more than one row per run")
