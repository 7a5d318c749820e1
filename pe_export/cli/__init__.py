"""The `pe-export` command line: parses options, calls one library function, prints with rich.

Where to look:

- root.py: the Typer app, the root options (--version, --debug) and `main` (errors, exit codes)
- options.py: options several commands share (model source, `Choice`, the batch syntax)
- output.py: the console and the printing several commands share (tables, steps, reports)
- listing.py: variants, info, profiles
- export.py: onnx, check, quantize, sensitivity
- build.py: trt, openvino, executorch
- serving.py: triton, serve, loadtest
- measure.py: parity, bench
- inputs.py: preprocess
- embedding.py: embed

Each command module holds its commands with their own options and printing; the table below
registers them. Library modules are imported inside the commands (`pe-export --help` imports no torch).
"""

from __future__ import annotations

from pe_export.cli import build, embedding, export, inputs, listing, measure, serving
from pe_export.cli.output import console, err_console
from pe_export.cli.root import app, main

# The commands, in the order `pe-export --help` lists them.
COMMANDS = {
    "variants": listing.variants,
    "info": listing.info,
    "preprocess": inputs.preprocess,
    "onnx": export.onnx_export,
    "check": export.check,
    "quantize": export.quantize,
    "sensitivity": export.sensitivity,
    "trt": build.trt,
    "openvino": build.openvino_ir,
    "executorch": build.executorch,
    "triton": serving.triton,
    "serve": serving.serve,
    "loadtest": serving.loadtest,
    "profiles": listing.profiles,
    "parity": measure.parity,
    "bench": measure.bench,
    "embed": embedding.embed,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
del _name, _command

__all__ = ["COMMANDS", "app", "console", "err_console", "main"]
