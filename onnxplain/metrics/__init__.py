"""Evaluation metrics of attributions: infidelity, max-sensitivity, and the deletion and insertion curves.

Every metric runs the model's forward-only graph (the forward pass and the target reduction
``target_output`` of the perturbation methods, :mod:`onnxplain.methods.perturbation`) in one reused
session, its runs cut into chunks of rows from the Explainer's memory budget.  ``model`` is an
:class:`~onnxplain.Explainer` (its output, attributed inputs, providers, budget and batch axes are used;
a gradient Explainer gets a forward-only graph built beside its own, cached) or a model (path, bytes,
``ModelProto``) with ``output=`` naming the explained output.  Inputs are an array or a dict by input
name; ``target`` takes Captum's forms (or ``target_weights=``, as :meth:`Explainer.explain`);
attributions come from any method or from elsewhere: an array (one attributed input), a dict by input
name or a tuple in the order of the attributed inputs, each shaped like its input.

:func:`evaluate` computes several of them for the same attributions in one call (computing the
attributions first when none are given) and returns a :class:`MetricsReport`: a table, a JSON or ``.npz``
file, the curves' picture; it is what ``onnxplain metrics`` runs.

Perturbation functions see the attributed inputs batch first, as numpy arrays: the array itself when one
input is attributed, else a dict by input name (they may return tuples in that order).  Inputs that are
not attributed (an attention mask) pass through unchanged.
"""
from __future__ import annotations

from .evaluation import METRIC_NAMES, MetricsReport, evaluate, read_attributions
from .flipping import DEFAULT_STEPS, FlippingCurve, deletion, insertion
from .infidelity import infidelity
from .perturbations import gaussian_perturbation, infidelity_perturb_func_decorator, uniform_perturbation
from .sensitivity import sensitivity_max

__all__ = ["DEFAULT_STEPS", "METRIC_NAMES", "FlippingCurve", "MetricsReport", "deletion", "evaluate",
           "gaussian_perturbation", "infidelity", "infidelity_perturb_func_decorator", "insertion",
           "read_attributions", "sensitivity_max", "uniform_perturbation"]
