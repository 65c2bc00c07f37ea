"""Sessions, providers, IO binding and memory-budget chunking.

One session is built per explanation graph and reused for every call and batch
size.  CUDA is used when onnxruntime can really create it (a GPU and its
libraries are present); otherwise the CPU, quietly.
"""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of intermediate tensors one run may use


@functools.lru_cache(maxsize=None)
def cuda_usable() -> bool:
    """True when a CUDA session can actually be created here (probed once, silently)."""
    if CUDA not in ort.get_available_providers():
        return False
    probe = _probe_model()
    previous = _quiet_logging(4)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(probe, so, providers=[CUDA, CPU])
        return CUDA in sess.get_providers()
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(previous)


def select_providers(providers=None) -> list[str]:
    """The providers to use: the ones asked for, else CUDA when usable, else CPU."""
    if providers is not None:
        providers = [providers] if isinstance(providers, str) else list(providers)
        available = ort.get_available_providers()
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in available]
        if unknown:
            raise ValueError(f"providers {unknown} are not available in this onnxruntime; available: {available}")
        return providers
    return [CUDA, CPU] if cuda_usable() else [CPU]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, profile_prefix: str | None = None) -> ort.SessionOptions:
    """The options of every onnxplain session, each chosen on purpose.

    - intra-op threads: ``threads``, else one per core this process may use
      (:func:`usable_cores`; onnxruntime's own default counts every core of the
      machine, which oversubscribes a container limited to a few of them);
      inter-op threads 1 with sequential execution: explanation graphs are one
      chain of large ops, and parallel branches would only compete for the same cores;
    - graph optimisation level ``ORT_ENABLE_ALL``: Conv+activation fusion and
      the blocked (NCHWc) layouts are most of a CNN's speed; only the session
      sees the optimised graph, never a saved one (it holds contrib ops);
    - memory arena and memory pattern on: every call repeats the same shapes,
      so buffers are planned once and reused;
    - ``profile_prefix``: onnxruntime's profiler writes its JSON trace under
      this prefix (:mod:`onnxplain.profile`); off otherwise.
    """
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = int(threads) if threads else usable_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


class Session:
    """One onnxruntime session over an explanation graph, reused for every call (options: :func:`session_options`)."""

    def __init__(self, model: onnx.ModelProto, providers=None, threads: int | None = None,
                 profile_prefix: str | None = None):
        self.providers = select_providers(providers)
        so = session_options(threads, profile_prefix)
        previous = _quiet_logging()
        try:
            self._sess = ort.InferenceSession(model.SerializeToString(), so, providers=self.providers)
        finally:
            ort.set_default_logger_severity(previous)
        self.on_cuda = CUDA in self._sess.get_providers()
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        outputs = list(outputs or self.output_names)
        if self.on_cuda:
            return self._run_bound(feeds, outputs)
        return dict(zip(outputs, self._sess.run(outputs, feeds)))

    def end_profiling(self) -> str:
        """Stop onnxruntime's profiler (a session built with ``profile_prefix``); the path of its JSON trace."""
        return self._sess.end_profiling()

    def _run_bound(self, feeds, outputs):
        """CUDA: inputs copied once, outputs kept on the device until the run ends."""
        with self._lock:
            binding = self._sess.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            for name in outputs:
                binding.bind_output(name, "cuda")
            self._sess.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        return dict(zip(outputs, values))


@dataclass(frozen=True)
class Cost:
    """What one call runs: ``rows`` forward rows in all, over ``runs`` session runs of at most ``rows_per_run``."""

    rows: int
    runs: int
    rows_per_run: int

    @classmethod
    def of(cls, run_rows) -> "Cost":
        """The cost of session runs of ``run_rows`` rows each."""
        sizes = [int(r) for r in run_rows]
        return cls(sum(sizes), len(sizes), max(sizes, default=0))


def rows_per_chunk(bytes_per_row: int, expansion: int, n_rows: int, budget: int | None) -> int:
    """How many input rows fit one run when every row expands into ``expansion`` rows."""
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    per = max(1, int(bytes_per_row)) * max(1, int(expansion))
    return int(max(1, min(n_rows, budget // per)))


class RowCost:
    """Estimate of the bytes one batch row costs in a run, bound to each call's input shapes.

    Sums the per-row sizes of the model's floating-point tensors (shape
    inference, batch first); ``factor`` covers the cotangents and temporaries
    of a backward pass (3) or a forward pass alone (about 1.5).  Symbolic
    dimensions (a sequence length) take their size from the inputs of the call;
    dimensions nothing names count as the largest bound one (or 64).
    """

    def __init__(self, model: onnx.ModelProto, factor: float = 3.0):
        self.factor = factor
        self.terms = []   # (bytes of the static part of a row, symbolic dim names, dims nothing names)
        infos = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
        for vi in infos:
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or tt.elem_type not in (1, 10, 11, 16):
                continue
            static, names, unknown = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize, [], 0
            for d in list(tt.shape.dim)[1:]:
                if d.HasField("dim_value") and d.dim_value > 0:
                    static *= d.dim_value
                elif d.dim_param:
                    names.append(d.dim_param)
                else:
                    unknown += 1
            self.terms.append((static, tuple(names), unknown))
        self.input_dims = {vi.name: [d.dim_param for d in vi.type.tensor_type.shape.dim]
                           for vi in model.graph.input}

    def __call__(self, feeds: dict | None = None) -> int:
        bound = {}
        for name, value in (feeds or {}).items():
            for param, size in zip(self.input_dims.get(name, [])[1:], np.shape(value)[1:]):
                if param:
                    bound[param] = int(size)
        default = max(bound.values(), default=64)
        total = 0
        for static, names, unknown in self.terms:
            size = static * default ** unknown
            for n in names:
                size *= bound.get(n, default)
            total += size
        return int(total * self.factor)


def bytes_per_row(model: onnx.ModelProto, factor: float = 3.0, feeds: dict | None = None) -> int:
    """:class:`RowCost` of ``model`` for one set of inputs."""
    return RowCost(model, factor)(feeds)


def _quiet_logging(level: int = 3) -> int:
    """Raise onnxruntime's default log level; return the level to restore."""
    previous = 2  # onnxruntime's default (warning); it offers no getter
    ort.set_default_logger_severity(level)
    return previous


def _probe_model() -> bytes:
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m.SerializeToString()
