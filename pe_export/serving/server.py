"""`pe-export serve`: an artifact on a real Triton Inference Server, here.

The server comes from a Triton install: the one `nvidia-pytriton` bundles (found without importing
pytriton, whose Python API pins numpy<2 and is never used), or the binary `--tritonserver` or
$TRITONSERVER names (NVIDIA's container: /opt/tritonserver/bin/tritonserver). The model runs on
Triton's python backend through pe-export's runners (onnxruntime CPU or CUDA, TensorRT), so one
server serves every artifact type with the same numbers as `pe-export parity`; `pe-export triton`
writes the repository for Triton's native backends instead.

Everything is checked before the server starts (artifact, variant, ports, the install). The server
gets a temporary folder (model repository, backend folder, log) and its own session; stopping it
sends SIGTERM, waits, kills what is left, and removes the folder and its shared-memory segments.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

import pe_export
from pe_export.errors import ToolFailed, Unavailable, UsageError
from pe_export.processes import die_with_parent
from pe_export.runners import ENGINE_SUFFIXES
from pe_export.serving.repository import ServingOptions, config_text, image_model_configs, model_name, write_image_models
from pe_export.validate import artifact_manifest

TRITONSERVER_ENV = "TRITONSERVER"
GET_TRITON = ("pip install --no-deps nvidia-pytriton==0.7.0 (its bundled server; --no-deps since its numpy<2 pin "
              f"is for its Python API, which pe-export does not use), or name a tritonserver binary with --tritonserver or ${TRITONSERVER_ENV}")
SHM = Path("/dev/shm")
STOP_SECONDS = 15  # SIGTERM lets Triton unload its models; past this, what is left is killed
LOG_TAIL = 15  # server log lines shown when it dies and says no error of its own
TRITON_ERROR = re.compile(r"^E\d{4} [\d:.]+ +\d+ [^\]]+\] ")  # glog's error prefix: E1203 12:00:00.123 42 file.cc:10]


class ServerSettings(BaseModel):
    """Where the server listens and how long it may take to load the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=1, le=65535)
    metrics_port: int = Field(8002, ge=1, le=65535)
    threads: Optional[int] = Field(None, ge=1)  # per model instance; None: the runtime's default
    start_seconds: float = Field(300, gt=0)

    @model_validator(mode="after")
    def _distinct_ports(self) -> "ServerSettings":
        if len({self.http_port, self.grpc_port, self.metrics_port}) < 3:
            raise ValueError("the HTTP, gRPC and metrics ports must differ")
        return self


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path  # Triton's backends folder (python/ inside)
    stub: Optional[Path]  # pytriton's stub for this Python, placed in python/; None: the install's own
    libraries: tuple[Path, ...]  # what the binary links against, for LD_LIBRARY_PATH


@dataclass
class Server:
    """A running server: its process, model name, URLs and log."""

    process: subprocess.Popen
    model: str
    settings: ServerSettings
    folder: Path
    shm_prefix: str

    @property
    def url(self) -> str:
        return f"http://localhost:{self.settings.http_port}"

    @property
    def urls(self) -> dict[str, str]:
        s = self.settings
        return {"HTTP": self.url, "gRPC": f"grpc://localhost:{s.grpc_port}", "metrics": f"http://localhost:{s.metrics_port}/metrics"}

    @property
    def log(self) -> Path:
        return self.folder / "tritonserver.log"

    def wait(self, stop: threading.Event) -> None:
        """Block until `stop` is set; an error with Triton's own words if the server dies first."""
        while not stop.wait(0.5):
            if self.process.poll() is not None:
                raise self.failure(f"Triton stopped (exit code {self.process.returncode})")

    def failure(self, what: str) -> ToolFailed:
        """`what` happened, said with Triton's own error (the models that failed to load, else its error
        lines, else its last lines) and a kept copy of the whole log, since the server's folder goes."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        kept = Path(tempfile.gettempdir()) / f"pe-export-serve-{self.model}-{os.getpid()}.log"
        kept.write_text(text)
        # glog quotes a multi-line message on one line: its first line is the error, the rest a traceback
        errors = [TRITON_ERROR.sub("", line).strip('"').split("\\n")[0]
                  for line in text.splitlines() if TRITON_ERROR.match(line)]
        said = list(dict.fromkeys([e for e in errors if "failed to load" in e] or errors)) or text.splitlines()[-LOG_TAIL:]
        return ToolFailed(f"{what}; Triton said:\n  " + "\n  ".join(said) + f"\nthe full log: {kept}")


def find_triton(explicit: Optional[Path] = None) -> TritonInstall:
    """The Triton install to run: `explicit`, else $TRITONSERVER, else nvidia-pytriton's bundled server."""
    named = explicit or (Path(os.environ[TRITONSERVER_ENV]) if os.environ.get(TRITONSERVER_ENV) else None)
    if named:
        if not (named.is_file() and os.access(named, os.X_OK)):
            raise UsageError(f"{named} is not an executable tritonserver binary")
        return _install(named.resolve().parent.parent)  # <root>/bin/tritonserver, <root>/backends
    spec = importlib.util.find_spec("pytriton")
    for package in (spec.submodule_search_locations or []) if spec else []:
        root = Path(package) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return _install(root)
    raise Unavailable(f"pe-export serve needs a Triton server, and none was found: {GET_TRITON}")


def _install(root: Path) -> TritonInstall:
    """The install under `root`; pytriton's layout adds one backend stub per Python version and its libraries."""
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if (root / "python_backend_stubs").is_dir() and not stub.is_file():
        raise Unavailable(f"the Triton server at {root} has no python backend stub for Python "
                          f"{sys.version_info.major}.{sys.version_info.minor}")
    libraries = root.parent.parent / "nvidia_pytriton.libs"
    return TritonInstall(root / "bin" / "tritonserver", root / "backends", stub if stub.is_file() else None,
                         (libraries,) if libraries.is_dir() else ())


def check_ports(settings: ServerSettings) -> None:
    """Refuse ports something already listens on (Triton binds every interface)."""
    for what, port in (("HTTP", settings.http_port), ("gRPC", settings.grpc_port), ("metrics", settings.metrics_port)):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton does: TIME_WAIT is no conflict
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                raise UsageError(f"port {port} ({what}) is already in use; choose another with --{what.lower()}-port") from None


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (the system's pick), for servers started by tests and benchmarks."""
    with contextlib.ExitStack() as held:
        probes = [held.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:  # all bound at once, so the ports differ
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


@contextlib.contextmanager
def running_server(artifact: Path, options: ServingOptions = ServingOptions(instance_kind="cpu"),
                   settings: ServerSettings = ServerSettings(), variant: Optional[str] = None,
                   tritonserver: Optional[Path] = None) -> Iterator[Server]:
    """Serve the artifact until the block ends; the server is ready (model loaded) when it is entered."""
    artifact = Path(artifact).resolve()
    manifest = artifact_manifest(artifact, variant)
    engine = artifact.suffix in ENGINE_SUFFIXES
    name = model_name(manifest, options, engine)
    image_models = image_model_configs(name, manifest, options, engine) if options.images else {}
    runner = "tensorrt" if engine else "onnxruntime-cuda" if options.instance_kind == "gpu" else "onnxruntime"
    _require_runner(runner)
    install = find_triton(tritonserver)
    check_ports(settings)
    folder = Path(tempfile.mkdtemp(prefix="pe-export-serve-"))
    prefix = f"pe_export_{os.getpid()}_{folder.name.rsplit('-', 1)[-1]}_"
    try:
        _write_model(folder / "models" / name, config_text(name, manifest, options, engine, artifact.name, {
            "pe_export.path": str(artifact), "pe_export.backend": runner, "pe_export.threads": str(settings.threads or 0)}))
        write_image_models(folder / "models", image_models)
        server = Server(_start(install, folder, settings, prefix), name, settings, folder, prefix)
        try:
            _wait_ready(server)
            yield server
        finally:
            stop(server.process)
    finally:
        remove_segments(prefix)
        shutil.rmtree(folder, ignore_errors=True)


def _require_runner(runner: str) -> None:
    """Refuse, before Triton starts, a runner this machine lacks (the model would only fail to load)."""
    if runner == "tensorrt":
        from pe_export.runners.tensorrt_env import import_tensorrt

        import_tensorrt()
    elif runner == "onnxruntime-cuda":
        from pe_export.runners.onnxruntime import require_provider

        require_provider("cuda")


def _write_model(model_dir: Path, config: str) -> None:
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config)
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), model_dir / "1" / "model.py")


def _backends(install: TritonInstall, folder: Path) -> Path:
    """The backends folder to give Triton: the install's own, or pytriton's with this Python's stub added
    (pytriton ships one stub per Python version beside the backend)."""
    if install.stub is None:
        return install.backends
    python = folder / "backends" / "python"
    python.mkdir(parents=True)
    for item in (install.backends / "python").iterdir():
        if item.is_file():
            (python / item.name).symlink_to(item)
    (python / "triton_python_backend_stub").symlink_to(install.stub)
    return folder / "backends"


def _prepend(env: dict[str, str], name: str, *paths: Path | str) -> None:
    """Put `paths` first in the search path `name` (empty entries dropped)."""
    env[name] = os.pathsep.join(p for p in (*map(str, paths), env.get(name, "")) if p)


def _start(install: TritonInstall, folder: Path, settings: ServerSettings, prefix: str) -> subprocess.Popen:
    env = dict(os.environ)
    # The stub embeds the Python it finds through libpython: this interpreter's LIBDIR first, or a pyenv
    # build's stub loads the system libpython3.x and fails ('_thread.RLock' object has no attribute
    # '_recursion_count'). Its site-packages come from the first python on PATH, so this one's goes first
    # (pe-export may run from a venv nobody activated); PYTHONPATH: model.py imports this very pe_export.
    _prepend(env, "PATH", Path(sys.exec_prefix) / "bin")
    _prepend(env, "LD_LIBRARY_PATH", *install.libraries, sysconfig.get_config_var("LIBDIR") or "")
    _prepend(env, "PYTHONPATH", Path(pe_export.__file__).parents[1])
    command = [str(install.binary), f"--model-repository={folder / 'models'}",
               f"--backend-directory={_backends(install, folder)}",
               f"--http-port={settings.http_port}", f"--grpc-port={settings.grpc_port}",
               f"--metrics-port={settings.metrics_port}", f"--backend-config=python,shm-region-prefix-name={prefix}",
               f"--exit-timeout-secs={STOP_SECONDS - 5}", "--disable-auto-complete-config"]
    caches = install.backends.parent / "caches"
    if caches.is_dir():
        command.append(f"--cache-directory={caches}")
    with open(folder / "tritonserver.log", "wb") as log:
        # Its own session, so a Ctrl-C meant for pe-export does not reach it before its clean stop;
        # and it dies with pe-export, should pe-export be killed.
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid()))


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + server.settings.start_seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise server.failure(f"Triton stopped while loading {server.model} (exit code {server.process.returncode})")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.settings.http_port}/v2/health/ready", timeout=2):
                return  # 200: every model loaded
        time.sleep(0.2)
    raise server.failure(f"Triton was not ready after {server.settings.start_seconds:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (Triton unloads its models and the stubs exit), then kill whatever of its session is left."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_SECONDS)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its session: a stub that outlived the server
    process.wait()


def remove_segments(prefix: str) -> None:
    """Remove the python backend's shared-memory regions (named from `prefix`) a killed stub left."""
    for segment in SHM.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            segment.unlink()
