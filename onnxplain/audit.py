"""Where DeepLIFT's relevance leaks: each node's local summation-to-delta residual.

A DeepLIFT rule is *conserving* when the relevance its inputs receive,
``sum(m * (x - x_ref))``, equals the relevance that reached its outputs,
``sum(dy * (y - y_ref))``.  The audited explanation graph
(:func:`onnxplain.methods.deeplift.emit_audit`) reports both per node and per
row; their differences add up to the call's ``delta``, so the nodes with the
largest residuals are the ones that break completeness.  ``Explainer.audit``
and ``onnxplain audit MODEL`` print them, largest first.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np

from .cache import cached_graph
from .methods.deeplift import AUDIT_ARRIVING, AUDIT_LEAVING, AUDIT_NODES, DeepLift
from .prepare import build_graph
from .runtime import Session

#: below this relative residual a node conserves to float32 rounding
CONSERVING = 1e-5


@dataclass
class Audit:
    """The audit of one call.  ``arriving`` / ``leaving``: ``(rows, nodes)`` relevance reaching each node's
    outputs and handed to its inputs; ``delta``: the call's completeness residual per row."""

    nodes: list[str]
    ops: list[str]
    arriving: np.ndarray
    leaving: np.ndarray
    delta: np.ndarray

    @property
    def residual(self) -> np.ndarray:
        """``leaving - arriving``: what each node's rule created (> 0) or lost (< 0), per row."""
        return self.leaving - self.arriving

    def worst(self, top: int | None = None) -> list[dict]:
        """The nodes by their largest residual over the rows, largest first: ``node``, ``op``, ``residual`` (at
        the row where it is largest), ``relevance`` (what arrived there), ``relative`` (their ratio)."""
        rows = []
        for j, (node, op) in enumerate(zip(self.nodes, self.ops)):
            r = int(np.argmax(np.abs(self.residual[:, j])))
            residual, relevance = float(self.residual[r, j]), float(self.arriving[r, j])
            rows.append({"node": node, "op": op, "row": r, "residual": residual, "relevance": relevance,
                         "relative": abs(residual) / max(abs(relevance), 1e-30)})
        rows.sort(key=lambda d: -abs(d["residual"]))
        return rows[:top] if top is not None else rows

    def leaking(self, tolerance: float = CONSERVING) -> list[dict]:
        """The nodes whose residual exceeds ``tolerance`` times the largest relevance any node of the call
        received (float32 rounding stays below 1e-5 of it; a node that received little is held to the same)."""
        scale = float(np.abs(self.arriving).max()) if self.arriving.size else 0.0
        return [d for d in self.worst() if abs(d["residual"]) > tolerance * scale]

    def report(self, top: int = 15) -> str:
        lines = [f"DeepLIFT audit: {len(self.nodes)} nodes, {len(self.delta)} rows; |delta| up to "
                 f"{np.abs(self.delta).max():.3g} (the residuals below add up to it)",
                 f"{'node':<40} {'op':<22} {'row':>4} {'residual':>12} {'relevance':>12} {'relative':>10}"]
        for d in self.worst(top):
            lines.append(f"{d['node'][:40]:<40} {d['op'][:22]:<22} {d['row']:>4} {d['residual']:>12.3e} "
                         f"{d['relevance']:>12.3e} {d['relative']:>10.2e}")
        leaks = self.leaking()
        lines.append(f"{len(leaks)} node(s) leak more than {CONSERVING:g} of the largest relevance"
                     + (": " + ", ".join(f"{d['node']} ({d['op']})" for d in leaks[:10]) if leaks else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"nodes": self.worst(), "delta": self.delta.tolist(), "leaking": [d["node"] for d in self.leaking()]}


def audit_call(ex, inputs, target=None, target_weights=None, **params) -> Audit:
    """:meth:`onnxplain.Explainer.audit`: run ``ex``'s DeepLIFT graph with the audit outputs on one call."""
    if type(ex.method) is not DeepLift:
        raise ValueError(f"the audit checks DeepLIFT's rules: build the Explainer with method='deeplift' "
                         f"(this one runs {ex.method.name!r})")
    if ex.spec.batch_size is not None:
        raise ValueError("the audit reads each tensor's reference from the stacked batch; audit an Explainer "
                         "built without batch_size")
    method = copy.copy(ex.method)
    method.audited = True

    def build():
        graph = build_graph(ex.model, method, ex.spec, clean=False)   # the optimizer is slow on its extra nodes
        return graph, Session(graph, ex.providers, ex.threads)
    graph, session = cached_graph(ex.cache_key + ("audit",), build)
    labels = json.loads({p.key: p.value for p in graph.metadata_props}[AUDIT_NODES])
    feeds, tw, params = ex.checked_call(inputs, target, target_weights, params)
    [part] = method.parts(params, ex.spec, feeds, ex.row_cost(feeds), ex.memory_budget)
    out = ex.runner.with_session(session).run_rows(feeds, tw, part, [AUDIT_ARRIVING, AUDIT_LEAVING, "delta"],
                                                   ex.row_cost(feeds))
    return Audit([n for n, _ in labels], [op for _, op in labels], out[AUDIT_ARRIVING], out[AUDIT_LEAVING],
                 out["delta"])
