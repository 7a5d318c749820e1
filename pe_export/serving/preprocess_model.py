"""The preprocessing model of a repository made with `--images`: one encoded image (the bytes of a
JPEG, PNG, ... file, sent as a UINT8 tensor) in, the normalized (N, 3, S, S) batch out, made by
pe-export's own preprocessing, exactly as at inference and calibration: N = 1 for most models, and for
PerceptionLM's the thumbnail and the tiles (the config's `pe_export.max_tiles`).

`pe_export.serving.repository` copies this file into `<model>_preprocess/1/model.py`; it runs in
Triton's python backend, whose Python needs pe-export installed. Tensors cross the backend's stub
through DLPack: the stub was built against numpy 1 and misreads numpy 2 arrays.
"""

from __future__ import annotations

import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils  # only inside Triton's python backend
from PIL import Image

from pe_export.model.inputs import image_pixels


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.size, self.max_tiles = int(parameters["pe_export.image_size"]), int(parameters["pe_export.max_tiles"])

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request) -> object:
        encoded = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "image")).tobytes()
        try:
            with Image.open(io.BytesIO(encoded)) as image:
                pixels, _ = image_pixels(image, self.size, self.max_tiles)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # not an image PIL can decode
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"cannot decode the image ({len(encoded)} bytes): {exc}"))
        return pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("pixels", pixels.contiguous())])
