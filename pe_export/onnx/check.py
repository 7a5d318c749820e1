"""`pe-export check`: a static lint of an ONNX file against what a target runtime can run."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import onnx

from pe_export.onnx.targets import Target, first_release, get_target
from pe_export.validate import missing_external_data, read_onnx

CONTROL_FLOW = {"If", "Loop", "Scan"}
COMPLEX_TYPES = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


@dataclass(frozen=True)
class Finding:
    where: str  # node name, tensor name or "model"
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass(frozen=True)
class CheckReport:
    path: Path
    target: Target
    opset: int
    nodes: int
    op_histogram: dict[str, int]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings

    def lines(self, first: int = 2, most: int = 3) -> list[str]:
        """One line per finding, except that a problem shared by more than `most` places is one line
        naming the first few and counting the rest."""
        by_problem: dict[str, list[str]] = collections.defaultdict(list)
        for finding in self.findings:
            by_problem[finding.problem].append(finding.where)
        lines = []
        for problem, places in by_problem.items():
            if len(places) <= most:
                lines += [f"{where}: {problem}" for where in places]
            else:
                lines.append(f"{', '.join(places[:first])} and {len(places) - first} more: {problem}")
        return lines

    def summary(self) -> str:
        top = ", ".join(f"{op} {n}" for op, n in list(self.op_histogram.items())[:6])
        return f"{self.path.name}: opset {self.opset}, {self.nodes} nodes ({top}); runs on {self.target.runtime}"


def check_onnx(path: Path, target: str | Target) -> CheckReport:
    """List every node, attribute or tensor in the file that the target cannot run."""
    target = get_target(target) if isinstance(target, str) else target
    model = read_onnx(path)
    opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), 0)
    findings = []
    if opset > target.support.max_opset:
        findings.append(Finding("model", f"opset {opset} is above {target.runtime}'s highest ({target.support.max_opset})"))
    for node in _all_nodes(model.graph):
        findings.extend(_node_findings(node, target))
    findings.extend(_complex_tensors(model.graph))
    findings.extend(_missing_external_data(model, path))
    histogram = collections.Counter(node.op_type for node in model.graph.node)
    return CheckReport(path, target, opset, len(model.graph.node), dict(histogram.most_common()), findings)


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) else []:
                yield from _all_nodes(sub)


def _node_findings(node: onnx.NodeProto, target: Target) -> list[Finding]:
    where = node.name or node.op_type
    if node.domain not in ("", "ai.onnx"):
        return [Finding(where, f"{node.domain}::{node.op_type} is outside the standard ONNX domain")]
    if node.op_type in CONTROL_FLOW:
        return [Finding(where, f"{node.op_type} (control flow) has no place in a fixed-size encoder graph")]
    if node.op_type == "RotaryEmbedding" and not target.support.rotary:
        return [Finding(where, f"RotaryEmbedding needs TensorRT {first_release('rotary')}+; {target.runtime} cannot "
                               "run it (export with --rope decomposed)")]
    if node.op_type == "Attention":
        if not target.support.attention:
            return [Finding(where, f"Attention needs TensorRT {first_release('attention')}+; {target.runtime} cannot "
                                   "run it (export with --attention decomposed)")]
        if target.support.single_output_attention and len([o for o in node.output if o]) > 1:
            return [Finding(where, f"Attention with {len(node.output)} outputs; {target.runtime} takes only the "
                                   "single-output form (no present_key/present_value/qk_matmul_output)")]
    return []


def _complex_tensors(graph: onnx.GraphProto) -> list[Finding]:
    typed = [*graph.input, *graph.output, *graph.value_info]
    found = [Finding(v.name, "complex-typed tensor") for v in typed if v.type.tensor_type.elem_type in COMPLEX_TYPES]
    found += [Finding(t.name, "complex-typed initializer") for t in graph.initializer if t.data_type in COMPLEX_TYPES]
    return found


def _missing_external_data(model: onnx.ModelProto, path: Path) -> list[Finding]:
    return [Finding(tensor, problem) for tensor, problem in missing_external_data(model, path)]
