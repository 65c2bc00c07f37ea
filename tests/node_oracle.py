"""The ONNX backend node tests as a gradient oracle.

The ``onnx`` package ships one small model per operator variant
(``onnx.backend.test.case.node``), each with its inputs.  Every test whose
model takes a float input and gives a float output *qualifies*: its backward
graph is built with onnxplain's rules, run in onnxruntime, and its
vector-Jacobian product along a random direction is held against central
finite differences of the model in float64 (``onnx.reference``) or, where the
model computes in float32 whatever it is fed, in float32 with a wider step.

A verdict is one of ``right``, ``wrong`` (with the two numbers), ``refused``
(an op without a rule, named) or ``skipped`` (with the reason: no float path,
onnxruntime cannot run the model itself...).  Inputs on a kink (Relu(0), a tie of
maxima) are moved off it once; inputs on the edge of an op's domain (Acosh(1)),
where the true derivative is infinite, are moved into it.  A right verdict also says
whether the model is affine in its inputs: where it is not, DeepLIFT needs a rule of
its own for the op (the plain gradient does not conserve).

Run ``python node_oracle.py [names]`` from ``tests/`` for a survey.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

from onnxplain.backward import with_bodies
from onnxplain.errors import ModelError, NoGradientPathError, UnsupportedOperatorError
from onnxplain.converters.normalize import normalize
from vjp_harness import FLOAT64_KERNELS, vjp_model

ort.set_default_logger_severity(3)
RANDOM = {"Dropout", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
          "Bernoulli", "Multinomial"}
FLOATS = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}


@dataclass(frozen=True)
class Verdict:
    kind: str          # right | wrong | refused | skipped
    detail: str = ""
    ops: tuple = ()    # refused op types; for a right verdict, the model's op types
    affine: bool | None = None  # right verdicts: whether the model is affine in its attributed inputs


@functools.lru_cache(maxsize=1)
def node_tests() -> dict:
    """All node test cases of the installed onnx, by name."""
    from onnx.backend.test.case import node
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.seterr(all="ignore")
        cases = node.collect_testcases(None)
        np.seterr(all="warn")
    return {c.name: c for c in cases if c.kind == "node"}


def _elem(vi) -> int:
    return vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _reference_run(model, feeds, output):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(ReferenceEvaluator(model, new_ops=FLOAT64_KERNELS).run([output], feeds)[0])


def _in_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its casts to float32 made casts to float64, in loop bodies and branches too (for
    differences in float64)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _casts_to_float64(m.graph)
    return m


def _casts_to_float64(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            elif a.type == onnx.AttributeProto.GRAPH:
                _casts_to_float64(a.g)


def _finite_difference(model, feeds, wrt, dirs, dy, output, ort_forward):
    """``<dy, J dx>`` by central differences, with the one-sided differences and the central one at
    four times the step (where they disagree, the function has a kink or a jump): in float64 through
    onnx.reference where the model computes in the precision it is fed, else in float32 through
    onnxruntime with a wider step.  Returns ``(central, (right, left, central_4h), rtol)``."""
    if dy.size == 0:
        return 0.0, (0.0, 0.0, 0.0), 1e-4
    wide_model = _in_float64(model)
    wide = {k: (v.astype(np.float64) if k in wrt else v) for k, v in feeds.items()}

    def reference(t):
        return _reference_run(wide_model, {**wide, **{x: wide[x] + t * dirs[x] for x in wrt}}, output)

    def runtime(t):
        return ort_forward({**feeds, **{x: (feeds[x] + t * dirs[x]).astype(feeds[x].dtype)
                                        for x in wrt}}).astype(np.float64)
    try:
        probe = reference(0.0)
        exact = probe.dtype == np.float64 and probe.shape == dy.shape and not _reference_deviates(model)
    except Exception:  # noqa: BLE001 - a reference kernel that refuses float64
        exact = False
    f, h, rtol = (reference, 1e-6, 1e-4) if exact else (runtime, 1e-2, 2e-2)
    values = {t: f(t * h) for t in (-4, -1, 0, 1, 4)}
    if any(v.shape != dy.shape for v in values.values()):
        f, h, rtol = runtime, 1e-2, 2e-2
        values = {t: f(t * h) for t in (-4, -1, 0, 1, 4)}
    dot = {t: float(np.sum(dy * v)) for t, v in values.items()}
    central = (dot[1] - dot[-1]) / (2 * h)
    return central, ((dot[1] - dot[0]) / h, (dot[0] - dot[-1]) / h, (dot[4] - dot[-4]) / (8 * h)), rtol


def _p_is_1(node) -> bool:
    return any(a.name == "p" and a.i == 1 for a in node.attribute)


#: Where onnx.reference and onnxruntime compute different functions (op -> (which nodes, why)), the
#: differences are taken in onnxruntime: the rules follow the runtime that runs them.
DIFFERENCES_IN_ONNXRUNTIME = {
    "LpNormalization": (_p_is_1, "onnx.reference's p=1 divides by sum(x), not sum(|x|)"),
    "LRN": (lambda node: True, "onnx.reference takes window sums for as many channels as the batch has rows, "
                               "and 0 for the others"),
    "MaxUnpool": (lambda node: len(node.input) > 2 and bool(node.input[2]),
                  "with output_shape, onnxruntime reads the indices flat over that shape, onnx.reference over "
                  "the unpadded one"),
}


def _reference_deviates(model) -> bool:
    return any(n.op_type in DIFFERENCES_IN_ONNXRUNTIME and DIFFERENCES_IN_ONNXRUNTIME[n.op_type][0](n)
               for n in model.graph.node)


def _shape_kept(ort_forward, feeds, x, shape) -> bool:
    """Whether a small change of float input ``x`` keeps the output's shape (Resize's scales do not)."""
    step = 0.01 * np.random.default_rng(1).standard_normal(feeds[x].shape)
    try:
        return all(ort_forward({**feeds, x: (feeds[x] + s * step).astype(feeds[x].dtype)}).shape == shape
                   for s in (1, -1))
    except Exception:  # noqa: BLE001
        return False


#: The newest IR version and default-domain opset the installed onnxruntime loads.
ORT_IR, ORT_OPSET = 13, 25


def _same_signature(low: onnx.defs.OpSchema, high: onnx.defs.OpSchema) -> bool:
    """Whether two versions of an op differ at most in the element types they admit (opset 28
    re-versioned many ops only to add types; onnxruntime checks the types it is given)."""
    if low.since_version == high.since_version:
        return True
    if sorted(low.attributes) != sorted(high.attributes):
        return False
    return all([(f.name, f.option) for f in getattr(low, kind)] == [(f.name, f.option) for f in getattr(high, kind)]
               for kind in ("inputs", "outputs"))


def _loadable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its IR version and opset lowered to what onnxruntime loads, where every node's
    schema is the same at the lower opset (the node tests declare the newest opset whatever the op)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ORT_OPSET)
    if model.ir_version <= ORT_IR and opset <= ORT_OPSET:
        return model
    low = min(opset, ORT_OPSET)
    for node in model.graph.node:
        try:
            same = _same_signature(onnx.defs.get_schema(node.op_type, low),
                                   onnx.defs.get_schema(node.op_type, opset))
        except onnx.defs.SchemaError:
            same = False
        if not same:
            return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = min(m.ir_version, ORT_IR)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = low
    return m


def judge(name: str, seed: int = 0) -> Verdict:
    case = node_tests()[name]
    model = _loadable(case.model)
    if model.graph.node[0].domain not in ("", "ai.onnx"):
        return Verdict("skipped", "not the default domain")
    inputs, _ = case.data_sets[0]
    names = [vi.name for vi in model.graph.input]
    feeds = {n: np.asarray(v) for n, v in zip(names, inputs) if isinstance(v, (np.ndarray, np.generic))}
    if len(feeds) != len(names):
        return Verdict("skipped", "sequence or optional inputs")
    wrt = [vi.name for vi in model.graph.input if _elem(vi) in FLOATS and feeds[vi.name].size]
    outs = [vi.name for vi in model.graph.output if _elem(vi) in FLOATS]
    if not wrt or not outs:
        return Verdict("skipped", "no float input or no float output")
    output = outs[0]
    try:
        base = _session(model)
    except Exception as e:  # noqa: BLE001
        return Verdict("skipped", f"onnxruntime cannot run the model: {str(e).splitlines()[0][:120]}")
    out_index = [o.name for o in base.get_outputs()].index(output)
    ort_forward = lambda f: base.run(None, f)[out_index]  # noqa: E731
    try:
        y = ort_forward(feeds)
    except Exception as e:  # noqa: BLE001
        return Verdict("skipped", f"onnxruntime cannot run the model: {str(e).splitlines()[0][:120]}")
    wrt = [x for x in wrt if _shape_kept(ort_forward, feeds, x, y.shape)]
    if not wrt:
        return Verdict("skipped", "every float input sets the output's shape")
    if any(n.op_type in RANDOM for n in model.graph.node):
        return Verdict("skipped", "random draws")
    if not np.all(np.isfinite(y)) or not all(np.all(np.isfinite(feeds[x])) for x in wrt):
        return Verdict("skipped", "non-finite values")
    try:
        norm = normalize(model, dynamic_batch=False, batch_axes={n: None for n in names})
        vm = vjp_model(with_bodies(norm), wrt, output)
    except UnsupportedOperatorError as e:
        return Verdict("refused", str(e)[:200], tuple(e.op_types))
    except NoGradientPathError as e:
        return Verdict("skipped", f"no gradient path: {e.node.op_type}")
    except ModelError as e:
        return Verdict("skipped", f"the model is refused: {str(e)[:150]}")
    except Exception as e:  # noqa: BLE001 - any other failure to build is a bug
        return Verdict("wrong", f"building the backward fails: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    rng = np.random.default_rng(seed)
    verdict = _compare(model, vm, feeds, wrt, output, ort_forward, rng)
    shipped = dict(feeds)
    for jitter in (1e-3, 1e-1):  # the shipped inputs sit on a kink or a tie (Relu(0), equal maxima): move off it
        if verdict is not KINK:  # (a singular point, such as an all-zero vector LpNormalization divides by,
            break                #  needs the wider step to leave its curvature behind)
        for x in wrt:
            feeds[x] = (shipped[x] + jitter * (1 + np.abs(shipped[x])) * rng.standard_normal(shipped[x].shape)
                        ).astype(shipped[x].dtype)
        verdict = _compare(model, vm, feeds, wrt, output, ort_forward, rng)
    if verdict.kind == "wrong" and "not finite" in verdict.detail and _on_domain_edge(ort_forward, feeds, wrt):
        verdict = _inside_the_domain(model, vm, feeds, wrt, output, ort_forward, rng) or verdict
    if verdict is KINK:
        return Verdict("wrong", "the function has a kink at the inputs and near them")
    if verdict.kind == "right":
        return Verdict("right", ops=tuple(n.op_type for n in model.graph.node),
                       affine=_is_affine(ort_forward, feeds, wrt, rng))
    return verdict


def _is_affine(ort_forward, feeds, wrt, rng) -> bool:
    """Whether the model is affine in its attributed inputs jointly, from two points around the inputs and
    their midpoint: ``f((a + b) / 2) == (f(a) + f(b)) / 2`` (the plain gradient then conserves exactly)."""
    a, b = ({x: feeds[x] + 0.5 * (1 + np.abs(feeds[x])) * rng.standard_normal(feeds[x].shape) for x in wrt}
            for _ in range(2))
    point = lambda v: {**feeds, **{x: v[x].astype(feeds[x].dtype) for x in wrt}}  # noqa: E731
    with np.errstate(all="ignore"):
        fa, fb = (ort_forward(point(v)).astype(np.float64) for v in (a, b))
        fm = ort_forward(point({x: (a[x] + b[x]) / 2 for x in wrt})).astype(np.float64)
    if not (np.all(np.isfinite(fa)) and np.all(np.isfinite(fb)) and np.all(np.isfinite(fm))):
        return False
    scale = max(1.0, float(np.abs(fa).max(initial=0)), float(np.abs(fb).max(initial=0)))
    return bool(np.all(np.abs(fm - (fa + fb) / 2) <= 1e-4 * scale))


def _on_domain_edge(ort_forward, feeds, wrt) -> bool:
    """Whether the inputs sit on the edge of the op's domain (Acosh(1), Atanh(1)), where the true
    derivative is infinite: the output is finite there but not a small step away on one side."""
    for sign in (1, -1):
        stepped = {**feeds, **{x: (feeds[x] + sign * 1e-3 * (1 + np.abs(feeds[x]))).astype(feeds[x].dtype)
                               for x in wrt}}
        with np.errstate(all="ignore"):
            if not np.all(np.isfinite(ort_forward(stepped))):
                return True
    return False


def _inside_the_domain(model, vm, feeds, wrt, output, ort_forward, rng):
    """The verdict a small step into the domain from its edge, or None when no one-signed step gets in."""
    for sign in (1, -1):
        inside = {**feeds, **{x: (feeds[x] + sign * 1e-3 * (1 + np.abs(feeds[x]))
                                  * (1 + rng.random(feeds[x].shape))).astype(feeds[x].dtype) for x in wrt}}
        if np.all(np.isfinite(ort_forward(inside))):
            return _compare(model, vm, inside, wrt, output, ort_forward, rng)
    return None


KINK = Verdict("kink")


def _compare(model, vm, feeds, wrt, output, ort_forward, rng):
    """The backward graph's ``<J^T dy, dx>`` against finite differences at ``feeds``; ``KINK`` where
    the one-sided differences disagree (the function is not differentiable there)."""
    y = ort_forward(feeds)
    dy = rng.standard_normal(y.shape)
    try:
        sess = _session(vm)
        res = sess.run(None, {**feeds, "dy": dy.astype(y.dtype)})
    except Exception as e:  # noqa: BLE001
        return Verdict("wrong", f"the backward graph fails in onnxruntime: {str(e).splitlines()[0][:200]}")
    got = dict(zip([o.name for o in sess.get_outputs()], res))
    grads = {x: got[f"grad_{x}"].astype(np.float64) for x in wrt}
    for x in wrt:
        if grads[x].shape != feeds[x].shape:
            return Verdict("wrong", f"gradient of {x} has shape {grads[x].shape}, not {feeds[x].shape}")
        if not np.all(np.isfinite(grads[x])):
            return Verdict("wrong", f"gradient of {x} is not finite")
    dirs = {x: rng.standard_normal(feeds[x].shape) for x in wrt}
    jvp, sides, rtol = _finite_difference(model, feeds, wrt, dirs, dy, output, ort_forward)
    vjp = float(sum(np.sum(grads[x] * dirs[x]) for x in wrt))
    scale = max(1.0, abs(jvp), float(sum(np.abs(g).sum() for g in grads.values())) * 1e-3)
    if max(sides) - min(sides) > 10 * rtol * scale or abs(sides[2] - jvp) > 10 * rtol * scale:
        return KINK
    if abs(jvp - vjp) > rtol * scale:
        return Verdict("wrong", f"finite differences {jvp:.6g} vs VJP {vjp:.6g}")
    return Verdict("right")


def survey(names=None):
    from collections import Counter
    names = sorted(node_tests()) if names is None else names
    verdicts = {n: judge(n) for n in names}
    kinds = Counter(v.kind for v in verdicts.values())
    refused = Counter(op for v in verdicts.values() if v.kind == "refused" for op in v.ops)
    return verdicts, kinds, refused


if __name__ == "__main__":
    import sys
    import time
    t = time.time()
    verdicts, kinds, refused = survey(sys.argv[1:] or None)
    print(dict(kinds), f"{time.time() - t:.0f}s")
    print("refused:", dict(refused.most_common()))
    for n, v in verdicts.items():
        if v.kind == "wrong":
            print("WRONG", n, v.detail)
    skips = {}
    for n, v in verdicts.items():
        if v.kind == "skipped":
            skips.setdefault(v.detail, []).append(n)
    for d, ns in sorted(skips.items(), key=lambda kv: -len(kv[1])):
        print("SKIP", len(ns), d, ns[:4])
