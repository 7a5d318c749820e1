"""How much each quantized site costs the output, measured by emulation in one onnxruntime session.

A site is one GEMM or convolution with the Q/DQ pairs of its inputs. The emulation model is the
(smoothed) fp32 model in which every site reads each input mixed with its Q/DQ image by a mask
given per sample: x + m (DQ(Q(x)) - x). Each sample of a batch is then one configuration (which
sites are quantized) on one image, so ranking a hundred sites costs a hundred fp32 forward passes
and a single model load instead of a hundred artifacts. A MatMul's weight is mixed per sample as a
(B, K, N) tensor; other ops (convolutions, Gemm, MatMuls of 2-D inputs) add m * Op(x, Wq - W) to
their output instead. The Q/DQ arithmetic is onnxruntime's own; integer kernels accumulate
differently, so the automatic fallback checks its choice with a parity run of the real artifact.
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
MASK = "pe_export/site_mask"
CHUNK = 8  # samples per run: configurations x images


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
    """One session of the smoothed fp32 model where a mask per sample turns each site's Q/DQ on."""

    def __init__(self, model: onnx.ModelProto, sites: list[qdq.Site], amax: dict[str, float], precision: str,
                 work: Path, external: bool, threads: int | None = None):
        import onnxruntime

        graph = model.graph
        self.nodes = list(dict.fromkeys(s.node for s in sites))  # graph order
        self.op_types = {n.name: n.op_type for n in graph.node if n.name in self.nodes}
        self.gmacs = {n.name: _macs(graph, n) / 1e9 for n in graph.node if n.name in self.nodes}
        self.input = graph.input[0].name
        _mask_sites(graph, sites, amax, precision, self.nodes)
        path = work / "emulation.onnx"
        onnx.save(model, str(path), save_as_external_data=external, location=f"{path.name}.data" if external else None,
                  all_tensors_to_one_file=True)
        options = onnxruntime.SessionOptions()
        # basic rewrites only: the extended ones would fuse Q/DQ patterns into integer kernels
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def score(self, configs: list[frozenset[str]], batch: np.ndarray, reference: np.ndarray,
              progress: Callable[[int, int], None] = lambda done, total: None) -> list[ParityFigures]:
        """The figures of each configuration (the set of quantized sites) over all images of `batch`."""
        rows = [(c, i) for c in range(len(configs)) for i in range(len(batch))]
        figures: list[ParityFigures] = []
        pending: list[np.ndarray] = []  # outputs of the configuration being scored, image by image
        for start in range(0, len(rows), CHUNK):
            part = rows[start:start + CHUNK]
            mask = np.array([[node in configs[c] for node in self.nodes] for c, _ in part], np.float32)
            out = self.session.run(None, {self.input: batch[[i for _, i in part]], MASK: mask})[0]
            for row in out:
                pending.append(row)
                if len(pending) == len(batch):
                    figures.append(compare(reference, np.stack(pending)))
                    pending = []
                    progress(len(figures), len(configs))
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
    """Rewire every site of `graph` through its mask-mixed Q/DQ image, in place."""
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input, *graph.output]}
    weights = {init.name: init for init in graph.initializer}
    by_node: dict[str, list[qdq.Site]] = {}
    for site in sites:
        by_node.setdefault(site.node, []).append(site)
    graph.input.append(helper.make_tensor_value_info(MASK, TensorProto.FLOAT, ["batch", len(nodes)]))
    shapes: set[int] = set()  # ranks whose (-1, 1, ..., 1) shape is in the graph
    ordered = []
    for node in graph.node:
        if node.name not in by_node:
            ordered.append(node)
            continue
        i = nodes.index(node.name)
        prefix = f"{node.name}/emulation"
        graph.initializer.append(numpy_helper.from_array(np.array(i, np.int64), f"{prefix}/index"))
        before = [helper.make_node("Gather", [MASK, f"{prefix}/index"], [f"{prefix}/mask"], axis=1)]
        after: list[onnx.NodeProto] = []

        def shaped(rank: int) -> str:
            """The mask as (B, 1, ..., 1) of `rank` dimensions, made once per rank."""
            name = f"{prefix}/mask{rank}"
            if rank not in shapes:
                shapes.add(rank)
                graph.initializer.append(numpy_helper.from_array(np.array([-1] + [1] * (rank - 1), np.int64),
                                                                 f"{MASK}/shape{rank}"))
            if all(name not in n.output for n in before):
                before.append(helper.make_node("Reshape", [f"{prefix}/mask", f"{MASK}/shape{rank}"], [name]))
            return name

        activation_rank = ranks[node.input[0]]
        for site in by_node[node.name]:
            pair = qdq.quantizer(graph, site, qdq.site_scale(site, amax, weights, precision), precision)
            image, tag = pair[-1].output[0], f"{prefix}/input{site.index}"
            before += pair
            if site.axis is None:  # an activation: x + m (DQ(Q(x)) - x)
                before += [helper.make_node("Sub", [image, site.tensor], [f"{tag}/delta"]),
                           helper.make_node("Mul", [shaped(ranks[site.tensor]), f"{tag}/delta"], [f"{tag}/scaled"]),
                           helper.make_node("Add", [site.tensor, f"{tag}/scaled"], [f"{tag}/mixed"])]
                node.input[site.index] = f"{tag}/mixed"
                continue
            before.append(helper.make_node("Sub", [image, site.tensor], [f"{tag}/delta"]))
            if node.op_type == "MatMul" and activation_rank >= 3:  # W + m (Wq - W), one weight per sample
                before += [helper.make_node("Mul", [shaped(activation_rank), f"{tag}/delta"], [f"{tag}/scaled"]),
                           helper.make_node("Add", [site.tensor, f"{tag}/scaled"], [f"{tag}/mixed"])]
                node.input[site.index] = f"{tag}/mixed"
            else:  # Op(x, W) + m Op(x, Wq - W): the op is linear in its weight
                output = node.output[0]
                node.output[0] = f"{prefix}/exact"
                delta = helper.make_node(node.op_type, [node.input[0], f"{tag}/delta"], [f"{prefix}/weight_delta"],
                                         name=f"{prefix}/weight_delta")
                delta.attribute.extend(node.attribute)
                after += [delta,
                          helper.make_node("Mul", [shaped(ranks[output]), f"{prefix}/weight_delta"], [f"{prefix}/scaled"]),
                          helper.make_node("Add", [f"{prefix}/exact", f"{prefix}/scaled"], [output])]
        ordered += [*before, node, *after]
    graph.ClearField("node")
    graph.node.extend(ordered)


def _macs(graph: onnx.GraphProto, node: onnx.NodeProto) -> int:
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
