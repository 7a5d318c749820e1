"""How much each quantized site costs the output, measured by emulation in one onnxruntime session.

A site is one GEMM or convolution with the Q/DQ pairs of its inputs. The emulation model is the
(smoothed) fp32 model in which every site reads each input, activation or weight, mixed with its
Q/DQ image by a per-site switch given with each run. A run is then one
configuration (which sites are quantized) on the scoring images, so ranking a hundred sites costs a
hundred fp32 forward passes and a single model load instead of a hundred artifacts. The Q/DQ
arithmetic is onnxruntime's own; integer kernels accumulate differently, so the automatic fallback
checks its choice with a parity run of the real artifact.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pe_export.precision import qdq
from pe_export.validate import ParityFigures, compare

Mode = Literal["alone", "kept"]  # each site quantized alone, or each kept alone in high precision
MODES: dict[str, str] = {"alone": "quantized alone", "kept": "kept alone in high precision"}
MASK = "pe_export/site_mask"  # the graph input switching each site's Q/DQ on (true) or off for a run
CHUNK = 2  # images per run


@dataclass(frozen=True)
class SiteScore:
    """The output against torch fp32 under one site's configuration, on the scoring images."""

    site: str
    op_type: str
    gmacs: float  # multiply-accumulates per image, in billions
    cosine_mean: float
    cosine_min: float
    max_abs: float


class Emulator:
    """One session of the smoothed fp32 model where a switch per site turns its Q/DQ on."""

    def __init__(self, model: onnx.ModelProto, sites: list[qdq.Site], amax: dict[str, float], precision: str,
                 work: Path, external: bool, threads: int | None = None):
        import onnxruntime

        graph = model.graph
        self.nodes = list(dict.fromkeys(s.node for s in sites))  # graph order
        self.op_types = {n.name: n.op_type for n in graph.node if n.name in self.nodes}
        self.gmacs = {n.name: site_macs(graph, n) / 1e9 for n in graph.node if n.name in self.nodes}
        self.input = graph.input[0].name
        _mask_sites(graph, sites, amax, precision, self.nodes)
        path = work / "emulation.onnx"
        onnx.save(model, str(path), save_as_external_data=external, location=f"{path.name}.data" if external else None,
                  all_tensors_to_one_file=True)
        options = onnxruntime.SessionOptions()
        options.enable_cpu_mem_arena = False  # each run's mixed weights come and go: no arena to keep them
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def score(self, configs: list[frozenset[str]], batch: np.ndarray, reference: np.ndarray,
              progress: Callable[[int, int], None] = lambda done, total: None) -> list[ParityFigures]:
        """The figures of each configuration (the set of quantized sites) over all images of `batch`."""
        figures = []
        for done, config in enumerate(configs, 1):
            switches = np.array([node in config for node in self.nodes])
            outputs = [self.session.run(None, {self.input: batch[start:start + CHUNK], MASK: switches})[0]
                       for start in range(0, len(batch), CHUNK)]
            figures.append(compare(reference, np.concatenate(outputs)))
            progress(done, len(configs))
        return figures


def rank(emulator: Emulator, mode: Mode, batch: np.ndarray, reference: np.ndarray,
         progress: Callable[[int, int], None] = lambda done, total: None) -> tuple[dict[str, ParityFigures], list[SiteScore]]:
    """The baselines (nothing and everything quantized) and every site's score, most damaging first."""
    everything = frozenset(emulator.nodes)
    configs = [frozenset(), everything]
    configs += [frozenset({n}) if mode == "alone" else everything - {n} for n in emulator.nodes]
    figures = emulator.score(configs, batch, reference, progress)
    scores = [SiteScore(n, emulator.op_types[n], emulator.gmacs[n], f.cosine_mean, f.cosine_min, f.max_abs)
              for n, f in zip(emulator.nodes, figures[2:])]
    # quantized alone: the lower the cosine, the more damage; kept alone: the higher, the more it mattered
    scores.sort(key=lambda s: s.cosine_mean, reverse=mode == "kept")
    return {"fp32": figures[0], "all quantized": figures[1]}, scores


def exclusion_patterns(nodes: list[str]) -> list[str]:
    """Profile `exclude` entries that match exactly these node names."""
    return [f"^{re.escape(n)}$" for n in nodes]


# ---- the emulation graph ---------------------------------------------------------------------------

def _mask_sites(graph: onnx.GraphProto, sites: list[qdq.Site], amax: dict[str, float], precision: str,
                nodes: list[str]) -> None:
    """Turn every site node of `graph` into a switch (an If) between the node reading its Q/DQ
    images and the node as it is, in place. Both branches read the weights where they lie, so a run
    pays for the branch it takes and nothing else; a weight's image is made once here, with the
    arithmetic onnxruntime uses, and stored beside it."""
    weights = {init.name: init for init in graph.initializer}
    by_node: dict[str, list[qdq.Site]] = {}
    for site in sites:
        by_node.setdefault(site.node, []).append(site)
    graph.input.append(helper.make_tensor_value_info(MASK, TensorProto.BOOL, [len(nodes)]))
    ordered = []
    for node in graph.node:
        if node.name not in by_node:
            ordered.append(node)
            continue
        prefix = f"{node.name}/emulation"
        graph.initializer.append(numpy_helper.from_array(np.array(nodes.index(node.name), np.int64), f"{prefix}/index"))
        quantized, inputs = [], list(node.input)
        for site in by_node[node.name]:
            scale = qdq.site_scale(site, amax, weights, precision)
            if site.axis is None:
                quantized += qdq.quantizer(graph, site, scale, precision)
                inputs[site.index] = quantized[-1].output[0]
            else:
                inputs[site.index] = f"{prefix}/weight{site.index}"
                image = qdq.dequantized(numpy_helper.to_array(weights[site.tensor]), scale, site.axis, precision)
                graph.initializer.append(numpy_helper.from_array(image, inputs[site.index]))
        ordered += [helper.make_node("Gather", [MASK, f"{prefix}/index"], [f"{prefix}/on"]),
                    helper.make_node("If", [f"{prefix}/on"], list(node.output), f"{prefix}/switch",
                                     then_branch=_branch(node, inputs, f"{prefix}/quantized", quantized),
                                     else_branch=_branch(node, list(node.input), f"{prefix}/exact"))]
    graph.ClearField("node")
    graph.node.extend(ordered)


def _branch(node: onnx.NodeProto, inputs: list[str], name: str, before: list[onnx.NodeProto] = ()) -> onnx.GraphProto:
    """A subgraph computing `node` on `inputs` (after the nodes `before`); all it reads comes from outside."""
    copy = helper.make_node(node.op_type, inputs, [f"{name}/output"], name, domain=node.domain)
    copy.attribute.extend(node.attribute)
    return helper.make_graph([*before, copy], name, [], [helper.make_empty_tensor_value_info(f"{name}/output")])


def site_macs(graph: onnx.GraphProto, node: onnx.NodeProto) -> int:
    """Multiply-accumulates of one GEMM or convolution per image (0 where shapes are not static)."""
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.value_info, *graph.input, *graph.output]}
    weights = {init.name: list(init.dims) for init in graph.initializer}
    out = dims.get(node.output[0], [])[1:]
    shape = weights.get(node.input[1]) or dims.get(node.input[1]) or [0, 0]
    if node.op_type == "Conv":
        inner = math.prod(shape[1:])
    else:  # MatMul (..., K, N), Gemm (K, N) or, transposed, (N, K)
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        inner = shape[-1] if trans_b else shape[-2]
    return math.prod(out) * inner if out and all(out) else 0


# ---- the report ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SensitivityReport:
    variant: str
    precision: str
    mode: Mode
    images: int
    threshold: float
    seconds: float
    peak_rss_mb: dict[str, float]
    baselines: dict[str, dict[str, float]]
    sites: list[SiteScore]

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps({"schema": "pe-export/sensitivity/1", **asdict(self)}, indent=2) + "\n")

    def records(self) -> list[dict]:
        """One row per site, most damaging first, as the tables show it."""
        total = sum(s.gmacs for s in self.sites) or 1.0
        return [{"rank": i, "site": s.site, "op": s.op_type, "work %": f"{100 * s.gmacs / total:.1f}",
                 "cosine mean": f"{s.cosine_mean:.5f}", "cosine min": f"{s.cosine_min:.5f}", "max abs": f"{s.max_abs:.3g}"}
                for i, s in enumerate(self.sites, 1)]

    def to_markdown(self) -> str:
        head = (f"{self.variant} {self.precision}, each site {MODES[self.mode]}, {self.images} images; "
                + ", ".join(f"{k}: cosine mean {v['cosine_mean']:.5f}" for k, v in self.baselines.items()))
        rows = self.records()
        columns = list(rows[0]) if rows else []
        lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}",
                 *(f"| {' | '.join(str(r[c]) for c in columns)} |" for r in rows)]
        return "\n".join([head, "", *lines]) + "\n"
