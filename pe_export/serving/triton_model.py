"""The model `pe-export serve` hands Triton's python backend: the artifact run by pe-export's own runner.

`pe_export.serving.server` copies this file into the model repository as `1/model.py`; it runs in
the backend's stub process, whose embedded Python is this interpreter (see server.py). The config's
parameters name the artifact, the runner backend and its threads. One `execute` call gets every
request dynamic batching gathered: their inputs run as one batch, and each gets its own rows back.

The stub was compiled against numpy 1, whose array struct differs from numpy 2's, so tensors never
cross as numpy arrays (`pb_utils.Tensor(name, array)`, `as_numpy()` misread them): inputs come in
and outputs go out through DLPack, which has no such dependence.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # only inside Triton's python backend

from pe_export.runners import open_runner

_set_destructor = ctypes.pythonapi.PyCapsule_SetDestructor
_set_destructor.argtypes = [ctypes.py_object, ctypes.c_void_p]


def _dlpack(array: np.ndarray) -> object:
    """A DLPack capsule of the array that the stub takes over.

    The stub marks a capsule it consumed "used_dlpack" instead of the standard "used_dltensor", and
    numpy's capsule destructor then reports a spurious error on every response; the stub frees the
    tensor itself through the DLPack deleter (checked: no memory grows over many responses), so the
    capsule's own destructor is dropped.
    """
    capsule = np.ascontiguousarray(array).__dlpack__()
    _set_destructor(capsule, None)
    return capsule


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        threads = int(parameters["pe_export.threads"])
        self.runner = open_runner(Path(parameters["pe_export.path"]), backend=parameters["pe_export.backend"],
                                  threads=threads or None)
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        try:
            inputs = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input)) for r in requests]
            outputs = self.runner.run(np.concatenate(inputs))
        except Exception as exc:  # noqa: BLE001 - every request must get an answer, the error as its text
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        bounds = np.cumsum([len(x) for x in inputs])[:-1]
        return [pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(self.output, _dlpack(rows))])
                for rows in np.split(outputs, bounds)]

    def finalize(self) -> None:
        self.runner.close()
