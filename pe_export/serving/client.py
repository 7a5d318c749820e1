"""A small HTTP client for Triton's KServe v2 protocol with its binary tensor extension.

The standard library's http.client is enough for the two calls pe-export makes (a model's config and
an inference), keeps one connection per thread without gevent (tritonclient.http's transport), and
sends the bytes tritonclient sends: a JSON header whose length is in `Inference-Header-Content-Length`,
then the raw tensor. Only local servers are addressed.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Optional

import numpy as np

from pe_export.errors import UsageError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
HEADER_LENGTH = "Inference-Header-Content-Length"


class RequestFailed(Exception):
    """The server answered with an error status, or the connection failed."""

    def __init__(self, status: Optional[int], message: str):
        super().__init__(f"{status or 'no answer'}: {message}")
        self.status = status


def local_address(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL on this machine; anything else is refused."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError:
        port = -1
    if parts.scheme != "http" or parts.hostname not in LOCAL_HOSTS or parts.path not in ("", "/") or port < 1:
        raise UsageError(f"{url!r}: give the HTTP address of a Triton server on this machine, "
                         f"such as http://localhost:8000 (load tests target {', '.join(LOCAL_HOSTS)} only)")
    return parts.hostname or "localhost", port


class TritonClient:
    """One keep-alive connection to one server; not shared between threads."""

    def __init__(self, url: str, timeout: float = 120):
        host, port = local_address(url)
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def get(self, path: str) -> dict:
        return json.loads(self._request("GET", path, b"", {})[1] or b"{}")

    def post(self, path: str) -> list | dict:
        return json.loads(self._request("POST", path, b"{}", {"Content-Type": "application/json"})[1])

    def infer(self, model: str, input_name: str, output_name: str, batch: np.ndarray) -> np.ndarray:
        """The output for one input: float32 images, or (uint8) the bytes of an encoded image file."""
        encoded = batch.dtype == np.uint8
        batch = np.ascontiguousarray(batch, dtype=np.uint8 if encoded else np.float32)
        header = json.dumps({
            "inputs": [{"name": input_name, "shape": list(batch.shape), "datatype": "UINT8" if encoded else "FP32",
                        "parameters": {"binary_data_size": batch.nbytes}}],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }).encode()
        headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
        answer, body = self._request("POST", f"/v2/models/{model}/infer", header + batch.tobytes(), headers)
        size = int(answer.getheader(HEADER_LENGTH) or len(body))
        output = json.loads(body[:size])["outputs"][0]
        return np.frombuffer(body[size:], dtype=np.float32).reshape(output["shape"])

    def _request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[http.client.HTTPResponse, bytes]:
        try:
            self.connection.request(method, path, body, headers)
            answer = self.connection.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()  # the next request opens a new connection
            raise RequestFailed(None, f"{type(exc).__name__}: {exc}") from None
        if answer.status != 200:
            raise RequestFailed(answer.status, _error_text(data))
        return answer, data

    def close(self) -> None:
        self.connection.close()


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body[:200]))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
