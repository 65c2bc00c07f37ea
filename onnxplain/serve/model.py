"""One served Explainer as a KServe model (``kserve.Model``): metadata and inference."""
from __future__ import annotations

import asyncio
import struct

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from .protocol import Interface, RequestError, reserved_parameter


class ExplainerModel(Model):
    """An :class:`onnxplain.Explainer` behind the Open Inference Protocol.

    The Explainer (its graph and session) is built by the caller at start-up and
    reused by every request.  Requests run in the event loop's worker threads
    (onnxruntime releases the GIL), so several are served at once and health
    checks are answered while an explanation runs.

    A request carries the model's inputs, and ``target``, ``target_weights`` and the
    method's parameters as optional inputs; a one-value parameter (and ``target``, one
    class index for every row) may come as a request-level parameter instead
    (``{"inputs": [...], "parameters": {"n_steps": 32}}``, tritonclient's
    ``infer(..., parameters={...})`` over REST or gRPC): see
    :meth:`onnxplain.serve.protocol.Interface.with_request_parameters`.
    """

    def __init__(self, name: str, explainer, defaults: dict | None = None):
        super().__init__(name)
        self.interface = Interface(explainer, defaults)
        self.ready = True

    def get_input_types(self) -> list[dict]:
        return [t.as_dict() for t in self.interface.inputs]

    def get_output_types(self) -> list[dict]:
        return [t.as_dict() for t in self.interface.outputs]

    async def predict(self, request: InferRequest, headers=None) -> InferResponse:
        if not isinstance(request, InferRequest):
            raise InvalidInput("expected an inference request of the Open Inference Protocol (v2): "
                               "POST /v2/models/<name>/infer with {\"inputs\": [...]}")
        tensors = request_tensors(request)
        wanted = [o.name for o in request.request_outputs or []]
        loop = asyncio.get_running_loop()
        try:
            tensors = self.interface.with_request_parameters(tensors, request_parameters(request))
            call = self.interface.call(tensors, wanted)
            results = await loop.run_in_executor(None, lambda: self.interface.results(*call))
        except (RequestError, ValueError, TypeError) as e:   # explain's checks name what they expected
            raise InvalidInput(str(e)) from e
        outputs = [self._output(name, a, request.from_grpc) for name, a in results.items()]
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs,
                             from_grpc=request.from_grpc, use_binary_outputs=request.use_binary_outputs,
                             requested_outputs=request.request_outputs)

    def _output(self, name: str, array: np.ndarray, grpc: bool) -> InferOutput:
        datatype = next(t.datatype for t in self.interface.outputs if t.name == name)
        if not grpc:
            return InferOutput(name, list(array.shape), datatype, data=array)
        out = InferOutput(name, list(array.shape), datatype)    # gRPC: raw bytes (raw_output_contents)
        out.set_data_from_numpy(array, binary_data=True)
        out.parameters = {}
        return out


def request_tensors(request: InferRequest) -> dict[str, tuple[str, np.ndarray]]:
    """The request's inputs as ``{name: (datatype, array)}``; malformed tensors are InvalidInput."""
    tensors = {}
    for x in request.inputs:
        if x.name in tensors:
            raise InvalidInput(f"input {x.name!r} is given twice; each input once")
        if any((not isinstance(d, (int, np.integer))) or d < 0 for d in x.shape):
            raise InvalidInput(f"input {x.name!r}: a shape is a list of non-negative integers, got {x.shape}")
        try:
            array = x.as_numpy()
        except (ValueError, TypeError) as e:
            raise InvalidInput(f"input {x.name!r}: its data does not hold a {x.datatype} tensor of shape "
                               f"{list(x.shape)} ({int(np.prod(x.shape))} values): {e}") from e
        if x.datatype == "BYTES":
            array = np.asarray(array, dtype=object)
        tensors[x.name] = (x.datatype, array)
    return tensors


def request_parameters(request: InferRequest) -> dict:
    """The request-level parameters as ``{key: value}``: REST's JSON values as they are; gRPC's InferParameter as
    its bool, int64 or string, or the double or uint64 that tritonclient's protocol adds (KServe's messages
    lack those two fields, so they arrive as unknown fields, read here).  Reserved keys are not decoded (they
    may hold anything; :mod:`onnxplain.serve.protocol` skips them)."""
    parameters = request.parameters
    if not parameters:
        return {}
    out = {}
    for key, value in parameters.items():
        if reserved_parameter(key):
            continue
        out[key] = _grpc_parameter(key, value) if hasattr(value, "WhichOneof") else value
    return out


def _grpc_parameter(key: str, value):
    """One gRPC InferParameter's value."""
    field = value.WhichOneof("parameter_choice")
    if field is not None:
        return getattr(value, field)
    from google.protobuf.unknown_fields import UnknownFieldSet
    for f in UnknownFieldSet(value):
        if f.field_number == 4 and f.wire_type == 1:      # double_param (fixed 64 bits)
            return struct.unpack("<d", struct.pack("<Q", f.data))[0]
        if f.field_number == 5 and f.wire_type == 0:      # uint64_param (varint)
            return int(f.data)
    raise InvalidInput(f"request parameter {key!r} holds no value; give a bool, int64, double or string")
