"""Error statistics between a reference output and a candidate's."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ParityFigures:
    """Token-wise cosine (rows along the last axis), absolute and relative errors."""

    cosine_mean: float
    cosine_min: float
    max_abs: float
    max_rel: float  # max |difference| / max |reference|
    rel_l2: float  # ||difference|| / ||reference||

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"cosine min {self.cosine_min:.7f} (mean {self.cosine_mean:.7f}), max abs {self.max_abs:.3g}, "
            f"max rel {self.max_rel:.3g}, rel L2 {self.rel_l2:.3g}"
        )


def compare(reference: np.ndarray, candidate: np.ndarray) -> ParityFigures:
    """Compare two outputs of the same shape; computed in float64."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    ref_rows = ref.reshape(-1, ref.shape[-1])
    cand_rows = cand.reshape(-1, cand.shape[-1])
    norms = np.linalg.norm(ref_rows, axis=1) * np.linalg.norm(cand_rows, axis=1)
    dots = np.einsum("ij,ij->i", ref_rows, cand_rows)
    both_zero = norms == 0
    cosines = np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms))
    diff = cand - ref
    ref_max = np.abs(ref).max()
    ref_l2 = np.linalg.norm(ref)
    return ParityFigures(
        cosine_mean=float(cosines.mean()),
        cosine_min=float(cosines.min()),
        max_abs=float(np.abs(diff).max()),
        max_rel=float(np.abs(diff).max() / ref_max) if ref_max else float(np.abs(diff).max()),
        rel_l2=float(np.linalg.norm(diff) / ref_l2) if ref_l2 else float(np.linalg.norm(diff)),
    )
