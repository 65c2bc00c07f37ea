"""Each Numba kernel against a plain NumPy reference, and the wrappers' checks."""
import itertools
from math import factorial

import numpy as np
import pytest

from onnxplain.kernels.ablation import fill_ablation, fold_ablation
from onnxplain.kernels.common import Labels, spread_groups
from onnxplain.kernels.occlusion import fill_occlusion, fold_occlusion, occlusion_counts, window_starts
from onnxplain.kernels.shapley import (MAX_EXACT_GROUPS, fill_coalitions, fill_permutation, fold_coalitions, fold_permutation,
                                       permutation_ranks, sample_permutations, shapley_weights)

RNG = np.random.default_rng(0)


def rows(n, d, dtype=np.float32):
    return RNG.standard_normal((n, d)).astype(dtype)


def pick(a, j):
    """Row ``j`` of an array of 1 (shared) or n rows."""
    return a[0] if a.shape[0] == 1 else a[j]


# ---------------------------------------------------------------------- ablation
@pytest.mark.parametrize("per_row", [False, True])
def test_fill_ablation_matches_numpy(per_row):
    n, d, g = 3, 7, 4
    x = rows(n, d)
    base = rows(n if per_row else 1, d)
    labels = RNG.integers(0, g, size=(n if per_row else 1, d))
    groups = np.array([2, 0, 3, 1, -1])
    out = fill_ablation(x, base, labels, groups, g)
    ref = np.stack([np.stack([np.where(pick(labels, j) == gu, pick(base, j), x[j]) for j in range(n)])
                    for gu in groups]).reshape(-1, d)
    np.testing.assert_array_equal(out, ref)
    again = np.full_like(out, np.nan)
    assert fill_ablation(x, base, Labels(labels, g), groups, g, out=again) is again
    np.testing.assert_array_equal(again, ref)


def test_fill_ablation_copies_float16_bits():
    x = rows(2, 5, np.float16)
    base = np.zeros((1, 5), np.float16)
    labels = np.array([[0, 0, 1, 1, 2]])
    out = fill_ablation(x, base, labels, np.array([1]), 3)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, np.where(labels == 1, 0, x))


INTEGER_DTYPES = [np.uint8, np.int16, np.int32, np.uint32, np.int64, np.bool_]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=lambda t: np.dtype(t).name)
def test_every_fill_copies_integer_and_boolean_values_exactly(dtype):
    """Token ids, bytes and masks: the extremes of the dtype survive (no float round trip)."""
    n, d, g = 2, 6, 3
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        x = RNG.integers(0, 2, (n, d)).astype(bool)
        base = ~x[:1]
    else:
        x = RNG.integers(info.min, info.max, (n, d), dtype=dtype, endpoint=True)
        x[0, 0], x[1, 1] = info.min, info.max
        base = np.full((1, d), info.max, dtype)
    labels = np.array([[0, 0, 1, 2, 2, 1]])

    def expect(from_x):   # from_x (U, d) bool: which elements of every row come from x
        return np.stack([np.where(keep, x[j], base[0]) for keep in from_x for j in range(n)])

    groups = np.array([1, 2])
    np.testing.assert_array_equal(fill_ablation(x, base, labels, groups, g), expect(labels != groups[:, None]))
    starts = window_starts((d,), (2,), (2,))
    covered = np.stack([(np.arange(d) >= s) & (np.arange(d) < s + 2) for s in starts[:, 0]])
    np.testing.assert_array_equal(fill_occlusion(x, base, (d,), (2,), starts), expect(~covered))
    codes = np.arange(1 << g)
    np.testing.assert_array_equal(fill_coalitions(x, base, labels, codes),
                                  expect(((codes[:, None] >> labels) & 1).astype(bool)))
    perms = np.array([[2, 0, 1]], np.int32)
    ranks = permutation_ranks(perms)
    steps = np.arange(g)
    out = fill_permutation(x, base, labels, ranks, np.zeros(g, np.int64), steps)
    np.testing.assert_array_equal(out, expect(ranks[0][labels] <= steps[:, None]))
    assert out.dtype == np.dtype(dtype)


def test_fold_ablation_matches_numpy():
    n, g = 4, 5
    f0 = RNG.standard_normal(n).astype(np.float32)
    groups = np.array([3, 1, 4])
    f = RNG.standard_normal(len(groups) * n).astype(np.float32)
    diffs = np.zeros((n, g))
    fold_ablation(f0, f, groups, diffs)
    ref = np.zeros((n, g))
    ref[:, groups] = (f0[None, :].astype(np.float64) - f.reshape(len(groups), n)).T
    np.testing.assert_allclose(diffs, ref, rtol=1e-12)


def test_spread_groups_matches_numpy():
    values = RNG.standard_normal((3, 4))
    labels = RNG.integers(0, 4, size=(3, 6))
    np.testing.assert_allclose(spread_groups(values, labels, 0.5), 0.5 * np.take_along_axis(values, labels, 1))
    shared = labels[:1]
    np.testing.assert_allclose(spread_groups(values, shared), values[:, shared[0]])


# ---------------------------------------------------------------------- occlusion
def reference_starts(shape, window, strides):
    per_dim = [list(range(0, max(dm - w, 0) + 1, s)) + ([] if (dm - w) % s == 0 else [((dm - w) // s + 1) * s])
               for dm, w, s in zip(shape, window, strides)]
    # Captum numbers windows with the first dimension varying fastest
    return [tuple(reversed(p)) for p in itertools.product(*reversed(per_dim))]


def occlude(row, base, start, window):
    out = row.copy()
    region = tuple(slice(s, s + w) for s, w in zip(start, window))
    out[region] = base[region]
    return out


CASES = [((2, 5, 4), (1, 2, 3), (1, 2, 1)),    # 5 - 2 = 3 is not a multiple of 2: the last window is cut
         ((7,), (3,), (2,)),
         ((3, 6, 6), (3, 2, 2), (3, 2, 2)),
         ((4, 3), (4, 3), (1, 1))]             # one window: the whole row


@pytest.mark.parametrize("shape,window,strides", CASES)
def test_window_starts_follow_captum(shape, window, strides):
    starts = window_starts(shape, window, strides)
    assert [tuple(s) for s in starts] == reference_starts(shape, window, strides)


@pytest.mark.parametrize("shape,window,strides", CASES)
def test_fill_fold_and_counts_of_occlusion_match_numpy(shape, window, strides):
    n, d = 3, int(np.prod(shape))
    x = rows(n, d)
    base = rows(1, d)
    starts = window_starts(shape, window, strides)
    active = RNG.random(len(starts)) < 0.7
    out = fill_occlusion(x, base, shape, window, starts, active)
    ref = []
    for u, start in enumerate(starts):
        for j in range(n):
            row = x[j].reshape(shape)
            ref.append(occlude(row, base[0].reshape(shape), start, window) if active[u] else row)
    np.testing.assert_array_equal(out, np.reshape(ref, (-1, d)))

    f0 = RNG.standard_normal(n).astype(np.float32)
    f = RNG.standard_normal(len(starts) * n).astype(np.float32)
    sums = np.zeros((n, d))
    fold_occlusion(f0, f, shape, window, starts, sums, active)
    ref_sums = np.zeros((n,) + shape)
    ref_counts = np.zeros(shape)
    for u, start in enumerate(starts):
        if not active[u]:
            continue
        region = tuple(slice(s, s + w) for s, w in zip(start, window))
        ref_counts[region] += 1
        for j in range(n):
            ref_sums[j][region] += f0[j] - f[u * n + j]
    np.testing.assert_allclose(sums, ref_sums.reshape(n, d), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(occlusion_counts(shape, window, starts, active), ref_counts.reshape(-1))


def test_occlusion_of_a_scalar_row():
    x = rows(2, 1)
    starts = window_starts((), (), ())
    assert starts.shape == (1, 0)
    np.testing.assert_array_equal(fill_occlusion(x, np.zeros((1, 1), np.float32), (), (), starts), 0)
    np.testing.assert_array_equal(occlusion_counts((), (), starts), [1])


@pytest.mark.parametrize("window,strides,match", [((6,), (1,), "exceed"), ((2,), (0,), "positive"),
                                                  ((2,), (3,), "larger than the window"), ((2, 2), (1,), "needs 1"),
                                                  ((0,), (1,), "positive"), ((2.5,), (1,), "ints")])
def test_window_starts_refuse_bad_windows(window, strides, match):
    with pytest.raises(ValueError, match=match):
        window_starts((5,), window, strides)


# ---------------------------------------------------------------------- Shapley sampling
def test_sample_permutations_are_permutations_and_antithetic_pairs_reverse():
    perms = sample_permutations(6, 5, np.random.default_rng(1), antithetic=True)
    assert perms.shape == (5, 6)
    assert all(sorted(p) == list(range(6)) for p in perms.tolist())
    np.testing.assert_array_equal(perms[1], perms[0][::-1])
    np.testing.assert_array_equal(perms[3], perms[2][::-1])
    np.testing.assert_array_equal(sample_permutations(6, 5, np.random.default_rng(1), antithetic=True), perms)
    ranks = permutation_ranks(perms)
    for p, r in zip(perms, ranks):
        np.testing.assert_array_equal(p[r], np.arange(6))


@pytest.mark.parametrize("per_row", [False, True])
def test_fill_permutation_matches_numpy(per_row):
    n, d, g, s = 2, 9, 4, 3
    x = rows(n, d)
    base = rows(n if per_row else 1, d)
    labels = RNG.integers(0, g, size=(n if per_row else 1, d))
    perms = sample_permutations(g, s, RNG)
    ranks = permutation_ranks(perms)
    perm_ids = np.repeat(np.arange(s), g)
    steps = np.tile(np.arange(g), s)
    out = fill_permutation(x, base, labels, ranks, perm_ids, steps)
    ref = []
    for p, k in zip(perm_ids, steps):
        present = set(perms[p, :k + 1].tolist())
        for j in range(n):
            keep = np.isin(pick(labels, j), list(present))
            ref.append(np.where(keep, x[j], pick(base, j)))
    np.testing.assert_array_equal(out, np.array(ref))


def test_fold_permutation_matches_numpy_across_chunks():
    n, g, s = 3, 4, 5
    perms = sample_permutations(g, s, RNG)
    perm_ids = np.repeat(np.arange(s), g)
    steps = np.tile(np.arange(g), s)
    f = RNG.standard_normal(s * g * n)
    f_base = RNG.standard_normal(n)
    ref = np.zeros((n, g))
    vals = f.reshape(s, g, n)
    for p in range(s):
        prev = f_base
        for k in range(g):
            ref[:, perms[p, k]] += vals[p, k] - prev
            prev = vals[p, k]
    for cut in ([s * g], [1, 7, 13, s * g], list(range(1, s * g + 1))):   # chunk boundaries
        phi = np.zeros((n, g))
        f_prev = np.zeros(n)
        start = 0
        for stop in cut:
            fold_permutation(f[start * n:stop * n], f_base, f_prev, perms, perm_ids[start:stop], steps[start:stop],
                             phi)
            start = stop
        np.testing.assert_allclose(phi, ref, rtol=1e-12, atol=1e-12)
    # each permutation's contributions add up to its last output minus the baseline's
    np.testing.assert_allclose(ref.sum(1), (vals[:, -1] - f_base).sum(0), rtol=1e-12)


# ---------------------------------------------------------------------- exact Shapley
def test_fill_coalitions_matches_numpy():
    n, d, g = 2, 6, 3
    x, base = rows(n, d), rows(1, d)
    labels = np.array([[0, 1, 2, 2, 1, 0]])
    codes = np.arange(1 << g)
    out = fill_coalitions(x, base, labels, codes)
    ref = [np.where((c >> labels[0]) & 1 == 1, x[j], base[0]) for c in codes for j in range(n)]
    np.testing.assert_array_equal(out, np.array(ref))


def test_fold_coalitions_is_the_shapley_formula():
    n, g = 2, 4
    value = RNG.standard_normal((n, 1 << g))       # v(S) for every coalition code
    codes = np.arange(1 << g)
    f = value.T.reshape(-1)                         # unit-major like a batch
    phi = np.zeros((n, g))
    for lo in range(0, 1 << g, 5):                  # in chunks
        fold_coalitions(f[lo * n:(lo + 5) * n], codes[lo:lo + 5], phi)
    ref = np.zeros((n, g))
    for i in range(g):
        for c in range(1 << g):
            if c >> i & 1:
                continue
            s = bin(c).count("1")
            w = factorial(s) * factorial(g - s - 1) / factorial(g)
            ref[:, i] += w * (value[:, c | 1 << i] - value[:, c])
    np.testing.assert_allclose(phi, ref, rtol=1e-12, atol=1e-12)
    w_in, w_out = shapley_weights(g)
    assert w_in[0] == 0 and w_out[g] == 0


def test_fold_coalitions_refuses_too_many_groups():
    with pytest.raises(ValueError, match=str(MAX_EXACT_GROUPS)):
        fold_coalitions(np.zeros(1), np.zeros(1, np.int64), np.zeros((1, MAX_EXACT_GROUPS + 1)))


# ---------------------------------------------------------------------- wrapper checks
def test_wrappers_check_shapes_dtypes_and_labels():
    x = rows(2, 4)
    with pytest.raises(ValueError, match="dtype of x"):
        fill_ablation(x, np.zeros((1, 4)), np.zeros((1, 4), int), np.array([0]), 1)
    with pytest.raises(ValueError, match="1 row .* or 2 rows"):
        fill_ablation(x, np.zeros((3, 4), np.float32), np.zeros((1, 4), int), np.array([0]), 1)
    with pytest.raises(ValueError, match="4 columns"):
        fill_ablation(x, np.zeros((1, 3), np.float32), np.zeros((1, 4), int), np.array([0]), 1)
    with pytest.raises(ValueError, match=r"group indices in \[0, 2\)"):
        fill_ablation(x, np.zeros((1, 4), np.float32), np.array([[0, 1, 2, 0]]), np.array([0]), 2)
    with pytest.raises(ValueError, match="integer"):
        fill_ablation(x, np.zeros((1, 4), np.float32), np.zeros((1, 4)), np.array([0]), 1)
    with pytest.raises(ValueError, match="C-contiguous float32 array of shape"):
        fill_ablation(x, np.zeros((1, 4), np.float32), np.zeros((1, 4), int), np.array([0]), 1,
                      out=np.empty((2, 4), np.float64))
    with pytest.raises(ValueError, match="one value per batch row"):
        fold_ablation(np.zeros(2), np.zeros(3), np.array([0]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="float64 array of shape"):
        fold_ablation(np.zeros(2), np.zeros(2), np.array([0]), np.zeros((2, 1), np.float32))
    with pytest.raises(ValueError, match="inside the row shape"):
        fill_occlusion(x, np.zeros((1, 4), np.float32), (4,), (2,), np.array([[4]]))
    with pytest.raises(ValueError, match="perm_ids must be in"):
        fill_permutation(x, np.zeros((1, 4), np.float32), np.zeros((1, 4), int), np.zeros((1, 1), np.int32),
                         np.array([1]), np.array([0]))


def test_fills_refuse_values_they_cannot_copy():
    for x in (np.zeros((1, 3), np.complex64), np.array([["a", "b", "c"]])):
        with pytest.raises(ValueError, match="floats, integers or booleans"):
            fill_ablation(x, x[:1], np.zeros((1, 3), int), np.array([0]), 1)
