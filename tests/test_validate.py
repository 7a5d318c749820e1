"""Validation services: error statistics on known vectors, retrieval agreement, chunked runs."""

from __future__ import annotations

import numpy as np
import pytest

from pe_export.validate import compare, retrieval_agreement, run_in_chunks


# ---- metrics on known vectors ------------------------------------------------------------------

def test_identical_outputs():
    x = np.random.default_rng(0).normal(size=(2, 5, 8))
    f = compare(x, x.copy())
    assert f.cosine_mean == pytest.approx(1.0, abs=1e-15) and f.cosine_min == pytest.approx(1.0, abs=1e-15)
    assert (f.max_abs, f.max_rel, f.rel_l2) == (0.0, 0.0, 0.0)


def test_orthogonal_outputs():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    cand = np.array([[0.0, 3.0], [5.0, 0.0]])
    f = compare(ref, cand)
    assert f.cosine_mean == pytest.approx(0.0) and f.cosine_min == pytest.approx(0.0)
    assert f.max_abs == pytest.approx(5.0)
    assert f.rel_l2 == pytest.approx(np.sqrt(1 + 9 + 25 + 4) / np.sqrt(5))


def test_scaled_outputs_keep_cosine_but_not_error():
    ref = np.random.default_rng(1).normal(size=(3, 4, 16))
    f = compare(ref, 2 * ref)
    assert f.cosine_min == pytest.approx(1.0)
    assert f.rel_l2 == pytest.approx(1.0) and f.max_rel == pytest.approx(1.0)
    assert f.max_abs == pytest.approx(np.abs(ref).max())


def test_one_bad_token_shows_in_min_not_mean():
    ref = np.ones((1, 100, 4))
    cand = ref.copy()
    cand[0, 7] = [1, -1, 1, -1]
    f = compare(ref, cand)
    assert f.cosine_min == pytest.approx(0.0) and f.cosine_mean == pytest.approx(0.99)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        compare(np.zeros((1, 2)), np.zeros((2, 1)))


# ---- retrieval -----------------------------------------------------------------------------------

def test_retrieval_agreement_on_planted_permutation():
    # three well separated pairs: each image's nearest neighbour is its twin
    base = np.eye(6)[[0, 0, 2, 2, 4, 4]] + 0.01 * np.eye(6)
    assert retrieval_agreement(base, base) == 1.0
    # swap images 1 and 2 in the candidate: images 0,1,2,3 now find the wrong twin, 4 and 5 still agree
    permuted = base[[0, 2, 1, 3, 4, 5]]
    assert retrieval_agreement(base, permuted) == pytest.approx(2 / 6)


def test_chunks_pad_a_short_last_batch():
    seen = []

    def run(x):
        seen.append(len(x))
        return x * 2

    out = run_in_chunks(run, np.arange(5, dtype=np.float32).reshape(5, 1), 2)
    assert seen == [2, 2, 2] and out.ravel().tolist() == [0, 2, 4, 6, 8]
