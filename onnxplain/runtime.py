"""Sessions, providers, IO binding and memory-budget chunking.

One session is built per explanation graph and reused for every call and batch
size.  CUDA is used when onnxruntime can really create it (a GPU and its
libraries are present); otherwise the CPU, quietly.
"""
from __future__ import annotations

import functools
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ModelError, OnnxplainError, RunError
from .graph import NODE_PREFIX

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of intermediate tensors one run may use, when free memory is unknown
#: share of the memory free when an Explainer is built that its runs may use by default
DEFAULT_MEMORY_SHARE = 0.25
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 ** 2, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1000 ** 3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000 ** 4, "tib": 1 << 40}


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
    - threads spin between the ops of a run but stop when the run ends
      (``session.force_spinning_stop``): a process often holds several sessions
      (one per method, the plain forward, a server's other models) and PyTorch,
      and a pool left spinning after its run takes the cores from whichever runs
      next (measured: IG on a 2-layer BERT 43 -> 20 ms, Shapley sampling on an MLP
      43 -> 16 ms when the forward session ran just before);
    - memory arena on, memory pattern off: a pattern is planned and kept per
      input shape, and the chunks of a call have several shapes (the last one
      is shorter), so patterns would add up past the memory budget; the arena
      reuses buffers anyway;
    - ``profile_prefix``: onnxruntime's profiler writes its JSON trace under
      this prefix (:mod:`onnxplain.profile`); off otherwise.
    """
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = int(threads) if threads else usable_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = False
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


#: IO bindings a thread keeps per session, one per shape of the runs (a call's chunks take one or two shapes)
BINDINGS_PER_THREAD = 4


_NODE_FAILURE = re.compile(r"running (\S+) node\. Name:'([^']*)' Status Message: (.*)", re.S)
#: where in onnxruntime's sources a status was raised, and the C++ signature after it: not for users
_SOURCE_LOCATION = re.compile(r"^\S+\.(?:cc|cpp|h):\d+ (?:[^\[]*?\)(?: \[with [^\]]*\])? )?")


#: how onnxruntime's ``run_with_iobinding`` words a failed run: a plain RuntimeError with the status after this
BOUND_RUN_FAILURE = "Error in execution: "


def run_failure(error: Exception) -> OnnxplainError | None:
    """onnxruntime's failure of a run as an error naming the node, its op and what to do, or None for an error
    that does not come from onnxruntime.  A node of the model (the forward pass, or a copy of it) failing is
    the inputs' matter (:class:`ModelError`: a server answers 400); a node the explanation graph added is
    onnxplain's (:class:`RunError`)."""
    bound = type(error) is RuntimeError and str(error).startswith(BOUND_RUN_FAILURE)
    if not bound and not type(error).__module__.startswith("onnxruntime."):
        return None
    text = " ".join(str(error).split())
    found = _NODE_FAILURE.search(text)
    if found is None:
        return ModelError(f"onnxruntime refused the run: {text.split(' : ', 3)[-1]}")
    op, name, status = found.groups()
    status = _SOURCE_LOCATION.sub("", status)
    if name.startswith(NODE_PREFIX):
        return RunError(f"the explanation graph failed at its node {name!r} ({op}), which onnxplain added: "
                        f"{status}. The model's own nodes ran; explain with another method, and report the model "
                        f"and the call")
    model_node = name.split("__partner")[0]
    return ModelError(f"the model's node {model_node!r} ({op}) failed on this call's inputs: {status}. Check the "
                      f"inputs' shapes and values (token ids within the vocabulary, sizes the model accepts) "
                      f"against what the model expects")


#: how onnxruntime names the node it could not load: "node with name 'n'", "Node (n)", 'In Node, ("n", Op, ...'
_CREATION_NODE = re.compile(r"""node with name '([^']*)'|Node \(([^)]*)\)|In Node, \("([^"]*)", (\w+)""")
_CREATION_OP = re.compile(r"implementation for (\w+)\(\d+\)|Op \((\w+)\)")
_STATUS_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _first(match) -> str | None:
    """The first group a regular expression's match filled, None without a match."""
    return next((g for g in match.groups() if g), None) if match else None


def creation_failure(error: Exception) -> OnnxplainError | None:
    """The error to raise for onnxruntime refusing to load a graph (an op or a type it has no kernel for, a
    graph it finds invalid), None for an error that does not come from onnxruntime.  A node of the model (or a
    copy of it) is the model's matter (:class:`ModelError`), a node onnxplain added is onnxplain's
    (:class:`RunError`); either way the message names the node and its op."""
    if not type(error).__module__.startswith("onnxruntime."):
        return None
    text = _SOURCE_LOCATION.sub("", _STATUS_PREFIX.sub("", " ".join(str(error).split())))
    found = _CREATION_NODE.search(text)
    node = _first(found)
    op = (found and found.group(4)) or _first(_CREATION_OP.search(text))
    if node is not None and node.startswith(NODE_PREFIX):
        return RunError(f"onnxruntime could not load the explanation graph at its node {node!r} ({op or 'op'}), "
                        f"which onnxplain added: {text}. Explain with another method, and report the model and "
                        f"the call")
    where = f"its node {node.split('__partner')[0]!r} ({op or 'op'})" if node else (f"an {op} node" if op else "")
    return ModelError(f"onnxruntime {ort.__version__} could not load the model{' at ' + where if where else ''}: "
                      f"{text}. Its forward pass must run in onnxruntime: check that onnxruntime implements the op "
                      f"for this input type and opset (for example, export float64 parts as float32)")


class Session:
    """One onnxruntime session over an explanation graph, reused for every call (options: :func:`session_options`).

    :meth:`run` returns fresh arrays, or writes into arrays the caller owns (``outputs`` a dict) through an
    IO binding kept per shape of the run and reused, on the CPU as on CUDA.
    """

    def __init__(self, model: onnx.ModelProto, providers=None, threads: int | None = None,
                 profile_prefix: str | None = None):
        self.providers = select_providers(providers)
        so = session_options(threads, profile_prefix)
        previous = _quiet_logging()
        try:
            self._sess = ort.InferenceSession(model.SerializeToString(), so, providers=self.providers)
        except Exception as e:
            failure = creation_failure(e)
            if failure is None:
                raise
            raise failure from e
        finally:
            ort.set_default_logger_severity(previous)
        self.on_cuda = CUDA in self._sess.get_providers()
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self._local = threading.local()   # each thread's bindings: runs of one binding never overlap

    def run(self, feeds: dict[str, np.ndarray], outputs=None) -> dict[str, np.ndarray]:
        """One run.  ``outputs``: the names to return (all when None), as new arrays; or a dict of
        name -> C-contiguous array of the output's exact shape and dtype, written in place (IO binding: no
        output is allocated or copied on the CPU) and returned.  onnxruntime's failures come out as
        :func:`run_failure` words them."""
        try:
            if isinstance(outputs, dict):
                return self._run_into(feeds, outputs)
            outputs = list(outputs or self.output_names)
            if self.on_cuda:
                return self._run_bound(feeds, outputs)
            return dict(zip(outputs, self._sess.run(outputs, feeds)))
        except Exception as e:
            failure = run_failure(e)
            if failure is None:
                raise
            raise failure from e

    @functools.cached_property
    def output_dtypes(self) -> dict:
        """The numpy dtype of each output by name (None for an output that is not a tensor)."""
        return {o.name: _np_dtype(o.type) for o in self._sess.get_outputs()}

    def end_profiling(self) -> str:
        """Stop onnxruntime's profiler (a session built with ``profile_prefix``); the path of its JSON trace."""
        return self._sess.end_profiling()

    def _binding(self, feeds: dict, outputs) -> "_Binding":
        """This thread's binding for runs of this shape (inputs' shapes and dtypes, outputs asked for)."""
        cache = getattr(self._local, "bindings", None)
        if cache is None:
            cache = self._local.bindings = LRUCache(BINDINGS_PER_THREAD, 1 << 62)
        key = (tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in feeds.items()), tuple(outputs))
        binding = cache.get(key)
        if binding is None:
            binding = _Binding(self._sess.io_binding())
            cache.put(key, binding, 1)
        return binding

    def _run_bound(self, feeds, outputs):
        """CUDA: inputs copied to the device once per run, outputs left there until the run ends and copied
        back once."""
        binding = self._binding(feeds, outputs)
        held = binding.bind_inputs(feeds)
        try:
            binding.bind_device_outputs(outputs, "cuda")
            self._sess.run_with_iobinding(binding.io)
            return dict(zip(outputs, binding.io.copy_outputs_to_cpu()))
        finally:
            binding.release()
            del held

    def _run_into(self, feeds, into: dict):
        """Outputs written into the caller's arrays: bound as they are on the CPU; on CUDA kept on the device
        until the run ends, then copied into them."""
        for name, array in into.items():
            if name not in self.output_dtypes:
                raise ValueError(f"{name!r} is not an output of this graph; outputs: {self.output_names}")
            if not isinstance(array, np.ndarray) or not array.flags.c_contiguous \
                    or array.dtype != self.output_dtypes[name]:
                raise ValueError(f"output {name!r} must be written into a C-contiguous "
                                 f"{self.output_dtypes[name]} array, got {_describe(array)}")
        binding = self._binding(feeds, tuple(into))
        held = binding.bind_inputs(feeds)
        try:
            if self.on_cuda:
                binding.bind_device_outputs(list(into), "cuda")
                self._sess.run_with_iobinding(binding.io)
                for array, value in zip(into.values(), binding.io.copy_outputs_to_cpu()):
                    np.copyto(array, value.reshape(array.shape))
            else:
                binding.bind_host_outputs(into)
                self._sess.run_with_iobinding(binding.io)
        finally:
            binding.release()
            del held
        return dict(into)


class _Binding:
    """An onnxruntime IO binding reused by the runs of one shape: inputs bound for each run by address
    (the caller's memory, without a copy), host outputs re-bound only when their buffer moves.  Between
    runs it holds nothing: no input array (bound by address, not by reference) and no device output."""

    def __init__(self, io):
        self.io = io
        self.outputs = None     # the host buffers outputs are bound to: (name, address, shape) each

    def bind_inputs(self, feeds: dict) -> list:
        """Bind each input by its address; returns the arrays bound, which must outlive the run."""
        held = []
        for name, value in feeds.items():
            a = np.require(value, requirements="C")
            self.io.bind_input(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
            held.append(a)
        return held

    def bind_device_outputs(self, names, device: str) -> None:
        """Outputs left on ``device`` by the run (allocated by onnxruntime; :meth:`release` frees them)."""
        for name in names:
            self.io.bind_output(name, device)
        self.outputs = None

    def release(self) -> None:
        """After a run: inputs unbound; device outputs freed (host buffers stay bound: they are the caller's)."""
        self.io.clear_binding_inputs()
        if self.outputs is None:
            self.io.clear_binding_outputs()

    def bind_host_outputs(self, into: dict) -> None:
        where = tuple((name, a.ctypes.data, a.shape) for name, a in into.items())
        if self.outputs != where:     # binding a name again replaces its buffer
            for name, array in into.items():
                self.io.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            self.outputs = where


def _np_dtype(ort_type: str):
    """The numpy dtype of an onnxruntime type string such as ``tensor(float)`` (None for non-tensors)."""
    match = re.fullmatch(r"tensor\((\w+)\)", ort_type or "")
    names = {"float": np.float32, "double": np.float64, "float16": np.float16, "int64": np.int64,
             "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16,
             "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_}
    return np.dtype(names[match.group(1)]) if match and match.group(1) in names else None


def _describe(a) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' (not C-contiguous)'}"
    return type(a).__name__


class LRUCache:
    """A mapping that forgets its least recently used entries beyond ``max_items`` entries or ``max_bytes``
    bytes (each entry's size is given when it is put; the newest entry stays even when larger alone).
    Not locked: callers hold their own lock."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items, self.max_bytes = int(max_items), int(max_bytes)
        self._entries: OrderedDict = OrderedDict()   # key -> (value, size), least recently used first
        self.nbytes = 0

    def get(self, key, default=None):
        if key not in self._entries:
            return default
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def put(self, key, value, size: int) -> None:
        if key in self._entries:
            self.nbytes -= self._entries.pop(key)[1]
        self._entries[key] = (value, int(size))
        self.nbytes += int(size)
        while len(self._entries) > 1 and (len(self._entries) > self.max_items or self.nbytes > self.max_bytes):
            self.nbytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


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


def free_memory(providers=None) -> int | None:
    """Bytes free now where the runs will happen: the CUDA device's free memory when the first provider is
    CUDA, else the available RAM (``psutil`` when installed, else ``/proc/meminfo``); None when unknown."""
    providers = select_providers(providers)
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if first == CUDA:
        device = providers[0][1].get("device_id", 0) if isinstance(providers[0], tuple) else 0
        return _cuda_free(int(device))
    return _ram_available()


def _ram_available() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cuda_free(device: int) -> int | None:
    """Free memory of CUDA ``device`` through the CUDA runtime library onnxruntime-gpu loads (no torch)."""
    import ctypes
    for lib in ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "cudart64_12.dll", "cudart64_110.dll"):
        try:
            cudart = ctypes.CDLL(lib)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if cudart.cudaSetDevice(device) != 0 or cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
            return None
        return int(free.value)
    return None


def memory_budget(value=None, providers=None) -> int:
    """The bytes of intermediate tensors one run may use.

    ``None``: :data:`DEFAULT_MEMORY_SHARE` of the memory free now (:func:`free_memory`; 1 GiB when unknown);
    an int: that many bytes; a string: a share of the free memory (``"80%"``) or a size (``"512MiB"``,
    ``"2GB"``, ``"300k"``).
    """
    if value is None:
        free = free_memory(providers)
        return max(1, int(free * DEFAULT_MEMORY_SHARE)) if free else DEFAULT_MEMORY_BUDGET
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {value!r}")
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        share = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
        if share:
            fraction = float(share.group(1)) / 100
            if not 0 < fraction <= 1:
                raise ValueError(f"memory_budget {value!r}: a share must lie in (0%, 100%]")
            free = free_memory(providers)
            if not free:
                raise ValueError(f"memory_budget {value!r}: the free memory of this machine is unknown; "
                                 f"give a number of bytes")
            return max(1, int(free * fraction))
        size = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", text)
        if size and size.group(2) in _UNITS and float(size.group(1)) > 0:
            return max(1, int(float(size.group(1)) * _UNITS[size.group(2)]))
    raise ValueError(f"memory_budget must be a positive number of bytes, a share of the free memory such as "
                     f"'80%', or a size such as '512MiB', got {value!r}")


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
