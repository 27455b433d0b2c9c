"""Tests of :mod:`refimpl.attention`: scaled dot-product and multi-head attention, mixers as matrices.

Oracles, each independent of the code under test:

* a naive formula written here, ``exp(s) / exp(s).sum()`` with ``scipy.special.softmax`` and an
  ``np.einsum`` product (no max subtraction, so it is used only where nothing overflows);
* ``scipy.special.logsumexp`` for the stable weights at huge logits;
* the filter-bank form ``Σ_h A_h X W_h^V W_h^O`` of multi-head attention;
* closed forms: τ → 0 is argmax selection, τ → ∞ (scale = 0) the mean, a Toeplitz matrix's
  lag profile is its kernel and its frequency response is ``np.fft.fft`` of that kernel.

Tolerances: :mod:`refimpl._testing` (SELF for loop twins, ORACLE for the oracles).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl._testing import ORACLE, SELF, assert_close
from refimpl.attention import (
    attention_entropy,
    attention_weights,
    effective_support,
    frequency_response,
    lag_profile,
    materialize,
    materialize_loop,
    multihead_attention,
    multihead_attention_loop,
    softmax_attention,
    softmax_attention_loop,
)

from _recording import recorder  # noqa: E402

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, _ = recorder()


def naive_attention(q, k, v, allowed=None, scale=None):
    """Eq. (4.1) written directly: logits, scipy softmax over allowed keys, einsum."""
    q, k, v = (np.asarray(a, float) for a in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("...id,...jd->...ij", q, k) * scale
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    A = scipy.special.softmax(s, axis=-1)
    return np.einsum("...ij,...jc->...ic", A, v), A


def qkv(seed, n=6, m=7, d=4, dv=3, batch=()):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(*batch, n, d)), rng.normal(size=(*batch, m, d)), rng.normal(size=(*batch, m, dv))


# ---------------------------------------------------------------------------------------------
class TestSoftmaxAttention:
    @pytest.mark.parametrize("seed", range(3))
    @pytest.mark.parametrize(
        "kw",
        [{}, {"causal": True}, {"scale": 0.3}, {"mask": "random"}, {"mask": "random", "causal": True}],
        ids=["plain", "causal", "scale", "mask", "mask+causal"],
    )
    def test_loop_twin_and_naive_oracle(self, seed, kw):
        q, k, v = qkv(seed, batch=(2,))
        kw = dict(kw)
        allowed = None
        if kw.get("mask") == "random":
            mask = np.random.default_rng(seed + 10).random((6, 7)) < 0.6
            mask[:, 0] = True  # every row keeps one key
            kw["mask"] = allowed = mask
        if kw.get("causal"):
            tri = np.tri(6, 7, dtype=bool)
            allowed = tri if allowed is None else allowed & tri
        y, A = softmax_attention(q, k, v, return_weights=True, **kw)
        y_loop, A_loop = softmax_attention_loop(q, k, v, return_weights=True, **kw)
        close(y, y_loop, rtol=SELF, what="softmax_attention vs loop")
        close(A, A_loop, rtol=SELF, what="attention weights vs loop")
        y_ref, A_ref = naive_attention(q, k, v, allowed, kw.get("scale"))
        close(y, y_ref, rtol=ORACLE, what="softmax_attention vs naive scipy softmax")
        close(A, A_ref, rtol=ORACLE, what="weights vs naive scipy softmax")
        assert np.all(A[..., ~np.broadcast_to(allowed, A.shape[-2:])] == 0) if allowed is not None else True

    @pytest.mark.parametrize("block", [1, 7, 10**9])
    @pytest.mark.parametrize("causal", [False, True])
    def test_blocked_path_without_weights(self, monkeypatch, block, causal):
        # without return_weights the query rows go through in blocks; force many and few blocks
        import refimpl._blocking as blocking
        import refimpl.attention as attention_module

        monkeypatch.setattr(blocking, "WORKSPACE_FLOATS", block)
        monkeypatch.setattr(attention_module, "MIN_BLOCK_ROWS", 1)
        rng = np.random.default_rng(block)
        q, k = rng.normal(size=(2, 1, 9, 4)), rng.normal(size=(3, 8, 4))
        v = rng.normal(size=(8, 2))
        mask = rng.random((2, 1, 9, 8)) < 0.7
        mask[..., 0] = True
        y = softmax_attention(q, k, v, mask=mask, causal=causal)
        assert y.shape == (2, 3, 9, 2)
        y_w, _ = softmax_attention(q, k, v, mask=mask, causal=causal, return_weights=True)
        close(y, y_w, rtol=SELF, what="blocked path vs full weights")
        close(y, softmax_attention_loop(q, k, v, mask=mask, causal=causal), rtol=SELF, what="blocked path vs loop")
        allowed = mask & np.tri(9, 8, dtype=bool) if causal else mask
        close(y, naive_attention(q, k, v, allowed)[0], rtol=ORACLE, what="blocked path vs naive")

    def test_peak_memory_has_no_n_m_d_intermediate(self):
        # O(N·M) at most (one logits buffer with return_weights), and less without: never (N, M, d)
        import tracemalloc

        n, d = 1024, 64
        q, k, v = qkv(14, n=n, m=n, d=d, dv=d)
        nm_bytes = n * n * 8
        io_bytes = 4 * (3 * n * d * 8)  # copies of q, k, v, the scaled q and the output, with room to spare
        # with weights: the one (N, M) float buffer A plus a boolean mask; without: blocks of 2^18 logits.
        # A second (N, M) float buffer (or any (N, M, d) intermediate) would exceed these bounds.
        for kwargs, bound in (({"return_weights": True}, 1.25 * nm_bytes + io_bytes), ({}, 0.5 * nm_bytes + io_bytes)):
            tracemalloc.start()
            try:
                softmax_attention(q, k, v, causal=True, **kwargs)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < bound, f"peak {peak / 2**20:.1f} MiB with {kwargs} exceeds {bound / 2**20:.1f} MiB"

    def test_default_scale_is_inverse_sqrt_d(self):
        q, k, v = qkv(1, d=9)
        close(softmax_attention(q, k, v), softmax_attention(q, k, v, scale=1 / 3), rtol=ORACLE, what="scale 1/sqrt(d)")

    def test_attention_weights_matches(self):
        q, k, v = qkv(2, batch=(3,))
        _, A = softmax_attention(q, k, v, causal=True, return_weights=True)
        assert_close(attention_weights(q, k, causal=True), A, rtol=0.0)

    def test_no_return_weights_returns_array(self):
        q, k, v = qkv(3)
        assert softmax_attention(q, k, v).shape == (6, 3)

    def test_broadcast_batch_axes(self):
        rng = np.random.default_rng(4)
        q = rng.normal(size=(2, 1, 5, 4))
        k = rng.normal(size=(3, 6, 4))
        v = rng.normal(size=(1, 6, 2))
        y = softmax_attention(q, k, v)
        assert y.shape == (2, 3, 5, 2)
        close(y, softmax_attention_loop(q, k, v), rtol=SELF, what="broadcast batch vs loop")
        close(y, naive_attention(q, k, v)[0], rtol=ORACLE, what="broadcast batch vs naive")

    def test_mask_with_batch_axes_beyond_q_k(self):
        q, k, v = qkv(5)
        v = np.stack([v, 2 * v])
        mask = np.ones((2, 6, 7), bool)
        mask[1, :, 3:] = False
        y = softmax_attention(q, k, v, mask=mask)
        assert y.shape == (2, 6, 3)
        close(y, softmax_attention_loop(q, k, v, mask=mask), rtol=SELF, what="batched mask vs loop")
        close(y, naive_attention(q, k, v, mask)[0], rtol=ORACLE, what="batched mask vs naive")

    def test_huge_logits_do_not_overflow(self):
        # logits ~ 1e4: exp would overflow without the max subtraction (Eq. 4.3)
        q, k, v = qkv(6)
        y, A = softmax_attention(100 * q, 100 * k, v, scale=1.0, return_weights=True)
        s = (100 * q) @ (100 * k).T
        A_ref = np.exp(s - scipy.special.logsumexp(s, axis=-1, keepdims=True))
        assert np.all(np.isfinite(y))
        close(A, A_ref, rtol=ORACLE, what="weights at logits 1e4 vs logsumexp")

    def test_shift_invariance_of_scores(self):
        # adding the same constant to every score of a row changes nothing: a key with a
        # component along a fixed direction that every query shares shifts each row by a constant
        q, k, v = qkv(7)
        q = np.concatenate([q, np.ones((6, 1))], axis=1)
        k1 = np.concatenate([k, np.zeros((7, 1))], axis=1)
        k2 = np.concatenate([k, 5.0 * np.ones((7, 1))], axis=1)
        close(softmax_attention(q, k1, v, scale=1.0), softmax_attention(q, k2, v, scale=1.0), rtol=1e-13,
              what="row shift invariance")

    def test_permutations(self):
        q, k, v = qkv(8)
        perm_k = np.random.default_rng(0).permutation(7)
        perm_q = np.random.default_rng(1).permutation(6)
        y = softmax_attention(q, k, v)
        close(softmax_attention(q, k[perm_k], v[perm_k]), y, rtol=1e-13, what="joint key/value permutation")
        close(softmax_attention(q[perm_q], k, v), y[perm_q], rtol=1e-13, what="query permutation")

    def test_convex_hull(self):
        q, k, v = qkv(9, dv=1)
        y = softmax_attention(q, k, v)
        assert np.all(y >= v.min() - 1e-15) and np.all(y <= v.max() + 1e-15)

    # ----- temperature limits (Eqs. 4.8-4.9)
    def test_zero_temperature_is_hard_argmax(self):
        q, k, v = qkv(10)
        s = q @ k.T
        y, A = softmax_attention(q, k, v, scale=1e6, return_weights=True)
        best = np.argmax(s, axis=1)
        gap = np.sort(s, axis=1)[:, -1] - np.sort(s, axis=1)[:, -2]
        assert gap.min() > 1e-3  # no ties in this draw
        assert_close(A, np.eye(7)[best], rtol=0.0, atol=1e-300)
        assert_close(y, v[best], rtol=0.0, atol=1e-300)

    def test_zero_temperature_with_causal_mask(self):
        q, k, v = qkv(11, n=7)
        y = softmax_attention(q, k, v, causal=True, scale=1e7)
        s = np.where(np.tri(7, 7, dtype=bool), q @ k.T, -np.inf)
        assert_close(y, v[np.argmax(s, axis=1)], rtol=1e-12)

    def test_infinite_temperature_is_mean(self):
        q, k, v = qkv(12)
        close(softmax_attention(q, k, v, scale=0.0), np.broadcast_to(v.mean(0), (6, 3)), rtol=ORACLE,
              what="scale 0 vs mean of values")
        y = softmax_attention(q, k, v, causal=True, scale=0.0)
        causal_mean = np.cumsum(v, axis=0)[:6] / np.arange(1, 7)[:, None]
        close(y, causal_mean, rtol=ORACLE, what="causal scale 0 vs running mean")

    def test_entropy_and_support_monotone_in_temperature(self):
        q, k, _ = qkv(13, m=20)
        taus = np.logspace(-3.5, 3, 15)
        H = np.array([attention_entropy(attention_weights(q, k, scale=1 / t)) for t in taus])
        n_eff = np.array([effective_support(attention_weights(q, k, scale=1 / t)) for t in taus])
        assert np.all(np.diff(H, axis=0) > -1e-12) and np.all(np.diff(n_eff, axis=0) > -1e-12)
        assert np.allclose(H[0], 0, atol=1e-6) and np.allclose(H[-1], np.log(20), atol=0.01)
        assert np.allclose(n_eff[0], 1, atol=1e-6) and np.allclose(n_eff[-1], 20, rtol=0.01)

    def test_entropy_and_support_closed_forms(self):
        A = np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0]])
        assert_close(attention_entropy(A), [0.0, np.log(4), np.log(2)], rtol=ORACLE)
        assert_close(effective_support(A), [1.0, 4.0, 2.0], rtol=ORACLE)

    # ----- properties
    @settings(max_examples=40)
    @given(
        seed=st.integers(0, 2**31),
        n=st.integers(1, 7),
        m=st.integers(1, 7),
        d=st.integers(1, 5),
        log_scale=st.floats(-3, 2),
    )
    def test_rows_sum_to_one(self, seed, n, m, d, log_scale):
        q, k, v = qkv(seed, n, m, d, 2)
        y, A = softmax_attention(q, k, v, scale=10.0**log_scale, return_weights=True)
        assert np.all(A >= 0)
        np.testing.assert_allclose(A.sum(-1), 1.0, rtol=0, atol=1e-14)
        close(y, softmax_attention_loop(q, k, v, scale=10.0**log_scale), rtol=SELF, what="hypothesis: loop twin")

    @settings(max_examples=30)
    @given(seed=st.integers(0, 2**31), n=st.integers(2, 9), i=st.integers(0, 8))
    def test_causality(self, seed, n, i):
        i = min(i, n - 2)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 4))
        y = softmax_attention(x, x, x, causal=True)
        x2 = x.copy()
        x2[i + 1 :] += rng.normal(size=(n - i - 1, 4))  # perturb keys and values after i
        y2 = softmax_attention(x2[: n], x2, x2, causal=True)
        np.testing.assert_array_equal(y2[: i + 1], y[: i + 1])
        assert not np.allclose(y2[i + 1 :], y[i + 1 :])

    # ----- bad input
    @pytest.mark.parametrize(
        ("args", "kwargs", "exc", "match"),
        [
            ((np.ones((3, 4)), np.ones((5, 3)), np.ones((5, 2))), {}, ValueError, "^k: .*last dimension d = 4"),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((6, 2))), {}, ValueError, "^v: .*M = 5"),
            ((np.ones(4), np.ones((5, 4)), np.ones((5, 2))), {}, ValueError, "^q: expected shape"),
            ((np.ones((3, 4)), np.ones(4), np.ones((5, 2))), {}, ValueError, "^k: expected shape"),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones(5)), {}, ValueError, "^v: expected shape"),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))), {"mask": np.ones((5, 3), bool)}, ValueError, "^mask: .*broadcastable"),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))), {"mask": np.ones((2, 3, 5), bool)}, ValueError, "^mask: .*broadcastable"),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))), {"mask": np.ones((3, 5))}, TypeError, "^mask: expected a boolean"),
            ((np.full((3, 4), np.nan), np.ones((5, 4)), np.ones((5, 2))), {}, ValueError, "^q: expected finite"),
            ((np.ones((3, 4)), np.full((5, 4), np.inf), np.ones((5, 2))), {}, ValueError, "^k: expected finite"),
            ((np.ones((3, 4)), np.ones((5, 4)), np.full((5, 2), np.nan)), {}, ValueError, "^v: expected finite"),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))), {"scale": -1.0}, ValueError, "^scale: "),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))), {"scale": np.inf}, ValueError, "^scale: "),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))), {"scale": "big"}, TypeError, "^scale: "),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))), {"causal": 1}, TypeError, "^causal: "),
            ((np.ones((3, 4)), np.ones((5, 4)), np.ones((5, 2))), {"return_weights": "yes"}, TypeError, "^return_weights: "),
            ((np.ones((2, 3, 4)), np.ones((3, 5, 4)), np.ones((5, 2))), {}, ValueError, "^k: the batch axes"),
            ((np.ones((3, 4)) * 1j, np.ones((5, 4)), np.ones((5, 2))), {}, TypeError, "^q: expected real"),
            ((np.ones((3, 4)), np.ones((0, 4)), np.ones((0, 2))), {}, ValueError, r"^k: expected shape \(\.\.\., M, d\) with at least one token"),
        ],
    )
    @pytest.mark.parametrize("func", [softmax_attention, softmax_attention_loop])
    def test_errors(self, func, args, kwargs, exc, match):
        with pytest.raises(exc, match=match):
            func(*args, **kwargs)

    def test_attention_weights_errors(self):
        with pytest.raises(ValueError, match="^k: .*last dimension"):
            attention_weights(np.ones((3, 4)), np.ones((5, 3)))
        with pytest.raises(ValueError, match="^q: expected shape"):
            attention_weights(np.ones(3), np.ones((5, 3)))

    def test_weights_helper_errors(self):
        with pytest.raises(ValueError, match="^weights: expected non-negative"):
            attention_entropy([[-0.5, 1.5]])
        with pytest.raises(ValueError, match="^weights: expected rows that sum to 1"):
            effective_support([[0.5, 0.6]])
        with pytest.raises(ValueError, match="^weights: expected shape"):
            effective_support(1.0)


# ---------------------------------------------------------------------------------------------
def mha_weights(seed, d_model=8, h=2, dk=3, dv=4, d_out=5):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(d_model, h * dk)) / np.sqrt(d_model),
        rng.normal(size=(d_model, h * dk)) / np.sqrt(d_model),
        rng.normal(size=(d_model, h * dv)),
        rng.normal(size=(h * dv, d_out)),
    )


class TestMultiheadAttention:
    @pytest.mark.parametrize("h", [1, 2, 4])
    @pytest.mark.parametrize("causal", [False, True])
    def test_loop_twin(self, h, causal):
        x = np.random.default_rng(h).normal(size=(2, 6, 8))
        w = mha_weights(h, h=h)
        y, A = multihead_attention(x, *w, h, causal=causal, return_weights=True)
        y_loop, A_loop = multihead_attention_loop(x, *w, h, causal=causal, return_weights=True)
        assert y.shape == (2, 6, 5) and A.shape == (2, h, 6, 6)
        close(y, y_loop, rtol=SELF, what="multihead vs loop")
        close(A, A_loop, rtol=SELF, what="multihead weights vs loop")

    @pytest.mark.parametrize("h", [1, 3])
    def test_filter_bank_form(self, h):
        # Eq. (4.5): Y = Σ_h A_h X W_h^V W_h^O, with A_h from an independent naive softmax
        x = np.random.default_rng(20 + h).normal(size=(7, 8))
        w_q, w_k, w_v, w_o = mha_weights(h, h=h)
        dk, dv = w_q.shape[1] // h, w_v.shape[1] // h
        y_ref = np.zeros((7, 5))
        for i in range(h):
            cols_k, cols_v = slice(i * dk, (i + 1) * dk), slice(i * dv, (i + 1) * dv)
            _, A = naive_attention(x @ w_q[:, cols_k], x @ w_k[:, cols_k], np.zeros((7, 1)))
            y_ref += A @ x @ w_v[:, cols_v] @ w_o[cols_v]
        close(multihead_attention(x, w_q, w_k, w_v, w_o, h), y_ref, rtol=ORACLE, what="multihead vs filter bank")

    def test_one_head_is_attention_of_projections(self):
        x = np.random.default_rng(30).normal(size=(5, 8))
        w_q, w_k, w_v, w_o = mha_weights(30, h=1)
        ref = softmax_attention(x @ w_q, x @ w_k, x @ w_v) @ w_o
        close(multihead_attention(x, w_q, w_k, w_v, w_o, 1), ref, rtol=ORACLE, what="h=1 vs sdpa")

    def test_mask_shared_by_heads(self):
        x = np.random.default_rng(31).normal(size=(6, 8))
        w = mha_weights(31)
        mask = np.random.default_rng(32).random((6, 6)) < 0.5
        mask[np.arange(6), np.arange(6)] = True
        y, A = multihead_attention(x, *w, 2, mask=mask, return_weights=True)
        assert np.all(A[:, ~mask] == 0)
        close(y, multihead_attention_loop(x, *w, 2, mask=mask), rtol=SELF, what="masked multihead vs loop")

    def test_without_weights_memory_stays_o_of_n(self):
        # the h (N, N) weights are formed only with return_weights: without, the heads run in blocks of rows (the
        # weights of 4 heads at N = 2048 are 128 MiB; before, they were formed and dropped); the same output either way
        import tracemalloc

        n, d_model, h = 2048, 64, 4
        x = np.random.default_rng(33).normal(size=(n, d_model))
        w = [np.random.default_rng(34 + i).normal(size=(d_model, d_model)) / 8 for i in range(4)]
        tracemalloc.start()
        try:
            y = multihead_attention(x, *w, h, causal=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < h * n * n * 8 / 4, f"peak {peak / 2**20:.1f} MiB"
        y_w, A = multihead_attention(x[:300], *w, h, causal=True, return_weights=True)
        close(multihead_attention(x[:300], *w, h, causal=True), y_w, rtol=SELF, what="without vs with weights")
        assert A.shape == (h, 300, 300) and y.shape == (n, d_model)

    @settings(max_examples=20)
    @given(seed=st.integers(0, 2**31), n=st.integers(2, 7), i=st.integers(0, 6))
    def test_causality(self, seed, n, i):
        i = min(i, n - 2)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 8))
        w = mha_weights(seed % 100)
        y = multihead_attention(x, *w, 2, causal=True)
        x2 = x.copy()
        x2[i + 1 :] += rng.normal(size=(n - i - 1, 8))
        np.testing.assert_array_equal(multihead_attention(x2, *w, 2, causal=True)[: i + 1], y[: i + 1])

    @pytest.mark.parametrize(
        ("which", "value", "h", "exc", "match"),
        [
            ("x", np.ones(8), 2, ValueError, "^x: expected shape"),
            ("x", np.full((4, 8), np.nan), 2, ValueError, "^x: expected finite"),
            ("w_q", np.ones((7, 6)), 2, ValueError, "^w_q: expected shape \\(d_model = 8"),
            ("w_q", np.ones((8, 5)), 2, ValueError, "^w_q: expected a width divisible"),
            ("w_k", np.ones((8, 8)), 2, ValueError, "^w_k: expected the shape of w_q"),
            ("w_v", np.ones((8, 7)), 2, ValueError, "^w_v: expected a width divisible"),
            ("w_o", np.ones((7, 5)), 2, ValueError, "^w_o: expected 8 rows"),
            ("w_o", np.ones(8), 2, ValueError, "^w_o: expected 2 dimensions"),
            (None, None, 0, ValueError, "^n_heads: expected n_heads >= 1"),
            (None, None, 2.0, TypeError, "^n_heads: expected an int"),
        ],
    )
    @pytest.mark.parametrize("func", [multihead_attention, multihead_attention_loop])
    def test_errors(self, func, which, value, h, exc, match):
        args = dict(zip(["x", "w_q", "w_k", "w_v", "w_o"], [np.ones((4, 8)), *mha_weights(0)]))
        if which is not None:
            args[which] = value
        with pytest.raises(exc, match=match):
            func(*args.values(), h)


# ---------------------------------------------------------------------------------------------
class TestMaterialize:
    @pytest.mark.parametrize("func", [materialize, materialize_loop])
    def test_attention_matrix(self, func):
        q, k, _ = qkv(40, n=6, m=6)
        W = func(lambda v: softmax_attention(q, k, v, causal=True), 6)
        assert_close(W, attention_weights(q, k, causal=True), rtol=ORACLE)

    def test_loop_twin(self):
        c = np.array([0.5, 0.3, 0.2, 0.1])
        mixer = lambda v: scipy.linalg.toeplitz(np.r_[c, np.zeros(4)], np.zeros(8)) @ v  # noqa: E731
        close(materialize(mixer, 8), materialize_loop(mixer, 8), rtol=SELF, what="materialize vs loop")

    def test_convolution_lag_profile_and_response(self):
        # a causal FIR filter y_i = Σ_ℓ c_ℓ v_{i−ℓ}: W is Toeplitz, its lag profile is c, H is the FFT of c
        c = np.array([0.5, 0.3, -0.2, 0.1])
        n = 10
        mixer = lambda v: np.stack([np.convolve(v[:, j], c)[:n] for j in range(v.shape[1])], axis=1)  # noqa: E731
        W = materialize(mixer, n)
        lags, h = lag_profile(W)
        assert lags[0] == -(n - 1) and lags[-1] == n - 1
        expected = np.zeros(2 * n - 1)
        expected[n - 1 : n - 1 + len(c)] = c
        close(h, expected, rtol=ORACLE, what="lag profile of a convolution")
        omega = 2 * np.pi * np.arange(16) / 16
        _, H = frequency_response(W, omega)
        close(H, np.fft.fft(c, 16), rtol=ORACLE, what="frequency response vs np.fft")

    def test_default_frequency_grid(self):
        omega, H = frequency_response(np.eye(4))
        assert omega.shape == (512,) and omega[0] == 0 and omega[-1] == np.pi
        assert_close(H, np.ones(512), rtol=ORACLE)  # identity = all-pass

    def test_complex_mixer(self):
        F = np.fft.fft(np.eye(5))
        W = materialize(lambda v: F @ v, 5)
        assert W.dtype == complex
        assert_close(W, F, rtol=ORACLE)

    def test_nonlinear_mixer_is_rejected(self):
        with pytest.raises(ValueError, match="^mixer: is not linear"):
            materialize(lambda v: v**2, 5)
        with pytest.raises(ValueError, match="^mixer: is not linear"):
            materialize_loop(lambda v: np.abs(v), 5)
        # the check can be disabled
        assert materialize(lambda v: v**2, 3, check_linear=False).shape == (3, 3)

    @pytest.mark.parametrize("func", [materialize, materialize_loop])
    def test_errors(self, func):
        with pytest.raises(TypeError, match="^mixer: expected a callable"):
            func(np.eye(3), 3)
        with pytest.raises(ValueError, match="^n: expected a positive int"):
            func(lambda v: v, 0)
        with pytest.raises(ValueError, match="^mixer: expected an output of the input's shape"):
            func(lambda v: v[:-1], 3)
        with pytest.raises(ValueError, match="^mixer: returned non-finite"):
            func(lambda v: v / 0.0 if False else v * np.nan, 3)

    def test_lag_profile_errors(self):
        with pytest.raises(ValueError, match="^W: expected a square matrix"):
            lag_profile(np.ones((3, 4)))
        with pytest.raises(ValueError, match="^omega: expected 1 dimensions"):
            frequency_response(np.eye(3), np.ones((2, 2)))


# ---------------------------------------------------------------------------------------------
# FlashAttention's online softmax, sliding windows and ALiBi (chapter 16, Eqs. (16.15)-(16.16))
# ---------------------------------------------------------------------------------------------

from refimpl import attention as _att  # noqa: E402  (appended section)


@pytest.mark.parametrize("n, m", [(1, 1), (63, 64), (64, 64), (65, 64), (130, 65), (65, 130), (200, 7)])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_equals_softmax_at_tile_boundaries(n, m, causal):
    rng = np.random.default_rng(n * 1000 + m)
    q, k, v = rng.normal(size=(2, n, 8)), rng.normal(size=(2, m, 8)), rng.normal(size=(2, m, 3))
    want = _att.softmax_attention(q, k, v, causal=causal)
    # the log-sum-exp of the allowed logits, by scipy (independent of both codes)
    s = (q @ np.swapaxes(k, -1, -2)) / np.sqrt(8)
    if causal:
        s = np.where(np.arange(m)[None, :] > np.arange(n)[:, None], -np.inf, s)
    lse_want = scipy.special.logsumexp(s, axis=-1)
    for bq, bk in ((64, 64), (16, 32), (1, 1), (7, 300)):
        y, lse = _att.flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk, return_lse=True)
        assert_close(y, want, rtol=1e-14, what="flash_attention vs softmax_attention")
        assert_close(lse, lse_want, rtol=ORACLE, what="flash_attention lse vs scipy logsumexp")
    y_loop, lse_loop = _att.flash_attention_loop(q, k, v, causal=causal, block_q=16, block_k=32, return_lse=True)
    assert_close(y_loop, want, rtol=1e-14, what="flash_attention_loop vs softmax_attention")
    assert_close(lse_loop, lse_want, rtol=ORACLE, what="flash_attention_loop lse")


@pytest.mark.parametrize("n, m, bq, bk, causal", [(9, 11, 4, 3, True), (9, 11, 4, 3, False), (65, 130, 64, 64, True),
                                                (30, 7, 7, 1, True), (12, 40, 5, 16, False)])
def test_flash_attention_running_max_and_sum(n, m, bq, bk, causal):
    """After key tile t the running (m_i, z_i) of (16.15) are the max and the shifted exponential sum
    of row i's allowed logits among keys 0 … (t+1)·bk − 1, computed here from the logits directly
    (independent of both codes); the loop twin, which skips tiles after the diagonal, agrees."""
    rng = np.random.default_rng(n * 100 + m)
    q, k, v = rng.normal(size=(2, n, 6)), rng.normal(size=(2, m, 6)), rng.normal(size=(2, m, 2))
    y, lse, mid = _att.flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk, return_lse=True,
                                       return_intermediates=True)
    assert list(mid) == ["running_max", "running_sum"]
    M, Z = mid["running_max"], mid["running_sum"]
    assert M.shape == Z.shape == (2, -(-m // bk), n)
    s = (q @ np.swapaxes(k, -1, -2)) / np.sqrt(6)
    if causal:
        s = np.where(np.arange(m)[None, :] > np.arange(n)[:, None], -np.inf, s)
    for t in range(M.shape[-2]):
        prefix = s[..., : (t + 1) * bk]
        m_want = prefix.max(axis=-1)
        seen = np.isfinite(m_want)
        assert np.array_equal(np.isfinite(M[..., t, :]), seen) and not Z[..., t, :][~seen].any()
        z_want = np.exp(prefix - np.where(seen, m_want, 0.0)[..., None]).sum(axis=-1)
        assert_close(M[..., t, :][seen], m_want[seen], rtol=1e-15, what=f"running max after tile {t}")
        assert_close(Z[..., t, :], z_want, rtol=1e-14, what=f"running sum after tile {t}")
    assert_close(M[..., -1, :] + np.log(Z[..., -1, :]), lse, rtol=1e-15, what="m + log z after the last tile = lse")
    y_l, lse_l, mid_l = _att.flash_attention_loop(q, k, v, causal=causal, block_q=bq, block_k=bk, return_lse=True,
                                                  return_intermediates=True)
    assert np.array_equal(np.isfinite(mid_l["running_max"]), np.isfinite(M))
    assert_close(np.where(np.isfinite(M), mid_l["running_max"], 0.0), np.where(np.isfinite(M), M, 0.0), rtol=1e-15,
                 what="running max: loop twin")
    assert_close(mid_l["running_sum"], Z, rtol=1e-14, what="running sum: loop twin")
    y_plain = _att.flash_attention(q, k, v, causal=causal, block_q=bq, block_k=bk)
    assert np.array_equal(y_plain, y)  # the flag adds outputs and changes none


def test_flash_attention_huge_logits_and_broadcast_batch():
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 1, 50, 4)), rng.normal(size=(1, 70, 4)), rng.normal(size=(70, 2))
    y = _att.flash_attention(q, k, v, scale=300.0, block_q=16, block_k=16)  # logits ~ 1e3: exp would overflow
    assert y.shape == (3, 1, 50, 2) and np.all(np.isfinite(y))
    assert_close(y, _att.softmax_attention(q, k, v, scale=300.0), rtol=1e-13, what="flash at huge logits")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(block_q=0), ValueError, "block_q"),
        (dict(block_k=8.0), TypeError, "block_k"),
        (dict(return_lse=1), TypeError, "return_lse"),
        (dict(return_intermediates=1), TypeError, "return_intermediates"),
        (dict(causal="yes"), TypeError, "causal"),
        (dict(scale=-1.0), ValueError, "scale"),
    ],
)
@pytest.mark.parametrize("fn", [_att.flash_attention, _att.flash_attention_loop])
def test_flash_attention_bad_input(fn, kwargs, exc, match):
    q = np.ones((5, 4))
    with pytest.raises(exc, match=match):
        fn(q, q, q, **kwargs)
    with pytest.raises(ValueError, match="v: expected the same number of rows"):
        fn(q, q, q[:3])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("w", [1, 3, 8, 100])
def test_sliding_window_is_a_band_mask(causal, w):
    rng = np.random.default_rng(w)
    q, k, v = rng.normal(size=(3, 2, 20, 5))
    band = np.abs(np.arange(20)[:, None] - np.arange(20)[None, :]) < w
    want = _att.softmax_attention(q, k, v, mask=band, causal=causal)
    for fn in (_att.softmax_attention, _att.softmax_attention_loop):
        assert_close(fn(q, k, v, window=w, causal=causal), want, rtol=SELF, what="window vs explicit band mask")
    if causal:  # each query sees min(w, i + 1) keys
        _, A = _att.softmax_attention(q, k, v, window=w, causal=True, return_weights=True)
        assert np.array_equal((A > 0).sum(-1)[0], np.minimum(w, np.arange(1, 21)))


@pytest.mark.parametrize("causal", [False, True])
def test_alibi_adds_a_linear_distance_bias(causal):
    rng = np.random.default_rng(11)
    H = 4
    q, k, v = rng.normal(size=(3, 2, H, 15, 6))
    slopes = _att.alibi_geometric_slopes(H)
    lag = np.abs(np.arange(15)[:, None] - np.arange(15)[None, :])
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(6) - slopes[:, None, None] * lag
    if causal:
        s = np.where(np.tri(15, dtype=bool), s, -np.inf)
    want = scipy.special.softmax(s, axis=-1) @ v  # naive oracle: the logits are small here
    y, A = _att.softmax_attention(q, k, v, alibi_slopes=slopes, causal=causal, return_weights=True)
    assert_close(y, want, rtol=ORACLE, what="ALiBi vs naive biased softmax")
    y2, A2 = _att.softmax_attention_loop(q, k, v, alibi_slopes=slopes, causal=causal, return_weights=True)
    assert_close(y2, y, rtol=SELF, what="ALiBi loop twin")
    assert_close(A2, A, rtol=SELF, what="ALiBi loop twin weights")
    # zero slopes are ordinary attention
    assert_close(_att.softmax_attention(q, k, v, alibi_slopes=np.zeros(H), causal=causal),
                 _att.softmax_attention(q, k, v, causal=causal), rtol=ORACLE, what="ALiBi m = 0")


def test_flash_attention_2_causal_alibi_lse_is_shifted_by_the_row_term():
    # FlashAttention-2 (alibi.h) adds slope · j to the causal logits and drops −slope · (i + o): the weights and the
    # output are refimpl's, its softmax_lse is refimpl's lse + slope · (i + o), o = M − N (bottom-right alignment)
    rng = np.random.default_rng(12)
    H, N, M, d = 3, 9, 14, 5
    q, k, v = rng.normal(size=(H, N, d)), rng.normal(size=(H, M, d)), rng.normal(size=(H, M, d))
    slopes = _att.alibi_geometric_slopes(H)
    i, j, o = np.arange(N)[:, None], np.arange(M)[None, :], M - N
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(d) + slopes[:, None, None] * j  # FA2's causal ALiBi bias
    s = np.where(j <= i + o, s, -np.inf)
    fa2_lse = scipy.special.logsumexp(s, axis=-1)
    y, lse = _att.flash_attention(q, k, v, causal=True, causal_alignment="bottom_right", alibi_slopes=slopes,
                                  return_lse=True, block_q=4, block_k=4)
    assert_close(y, scipy.special.softmax(s, axis=-1) @ v, rtol=ORACLE, what="the same output")
    assert_close(fa2_lse, lse + slopes[:, None] * (np.arange(N) + o), rtol=ORACLE, what="FA2's lse = lse + slope (i + o)")


def test_alibi_geometric_slopes():
    assert np.array_equal(_att.alibi_geometric_slopes(8), 2.0 ** -np.arange(1, 9))
    assert np.allclose(_att.alibi_geometric_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    with pytest.raises(ValueError, match="n_heads"):
        _att.alibi_geometric_slopes(0)


@pytest.mark.parametrize("fn", [_att.softmax_attention, _att.softmax_attention_loop])
def test_window_and_alibi_bad_input(fn):
    q = np.ones((2, 6, 4))
    with pytest.raises(ValueError, match="window"):
        fn(q, q, q, window=0)
    with pytest.raises(TypeError, match="window"):
        fn(q, q, q, window=2.5)
    # rows 4.. see no key: output 0 and log-sum-exp −inf (the kernels' convention), not an error
    y, lse = fn(np.ones((9, 4)), np.ones((3, 4)), np.ones((3, 4)), window=2, return_lse=True)
    assert np.all(y[4:] == 0) and np.all(np.isneginf(lse[4:])) and np.all(np.isfinite(lse[:4]))
    with pytest.raises(ValueError, match="alibi_slopes: expected slopes >= 0"):
        fn(q, q, q, alibi_slopes=np.array([-1.0, 1.0]))
    with pytest.raises(ValueError, match="alibi_slopes: shape"):
        fn(q, q, q, alibi_slopes=np.ones(3))
    with pytest.raises(ValueError, match="alibi_slopes: expected finite"):
        fn(q, q, q, alibi_slopes=np.array([np.nan, 1.0]))


# ---------------------------------------------------------------------------------------------
# The conventions of fused kernels (chapter 4, Eqs. (4.14)-(4.15)): causal alignment, windows,
# ALiBi, soft-capping, grouped-query heads, the log-sum-exp output
# ---------------------------------------------------------------------------------------------

import itertools  # noqa: E402


def dense_kernel_reference(q, k, v, *, causal=False, alignment="top_left", window=None, slopes=None, softcap=None,
                           groups=1, mask=None, scale=None):
    """Eq. (4.14) as one dense float64 formula, written independently of refimpl.attention.

    Grouped heads by ``np.repeat`` of the key/value heads (query head h reads kv head h // G),
    an explicit (N, M) matrix of allowed pairs, ``c tanh(s/c)``, the ALiBi distance matrix,
    the log-sum-exp by ``scipy.special.logsumexp`` and the weights as ``exp(s − lse)`` (no max
    shift). A row with no allowed key: y = 0, A = 0, lse = −inf.
    """
    if groups > 1:
        k, v = np.repeat(k, groups, axis=-3), np.repeat(v, groups, axis=-3)
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    s = scale * (q @ np.swapaxes(k, -1, -2))  # (BLAS; einsum without optimize is slow at d = 256)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    pos_q = np.arange(n)[:, None] + (0 if alignment == "top_left" else m - n)  # aligned query positions
    pos_k = np.arange(m)[None, :]
    if slopes is not None:
        s = s - np.asarray(slopes)[:, None, None] * np.abs(pos_q - pos_k)
    allowed = np.ones((n, m), dtype=bool)
    if causal:
        allowed &= pos_k <= pos_q
    if window is not None:
        allowed &= np.abs(pos_q - pos_k) < window
    if mask is not None:
        allowed = allowed & mask
    s = np.where(allowed, s, -np.inf)
    lse = scipy.special.logsumexp(s, axis=-1)
    A = np.exp(s - np.where(np.isfinite(lse), lse, 0.0)[..., None])
    return A @ v, A, lse


def close_lse(lse, want, what):
    """Equal −∞ pattern, finite entries close (relative to the largest |ℓ|, at least 1)."""
    assert lse.shape == want.shape, what
    assert np.array_equal(np.isneginf(lse), np.isneginf(want)), f"{what}: the rows with lse = -inf differ"
    fin = np.isfinite(want)
    if fin.any():
        err = np.max(np.abs(lse[fin] - want[fin])) / max(1.0, np.max(np.abs(want[fin])))
        assert err <= ORACLE, f"{what}: lse error {err:.2e}"


#: every combination of the kernel options (the head counts: H = 4 query heads, H_kv kv heads)
OPTION_GRID = list(itertools.product([False, True], ["top_left", "bottom_right"], [None, 16], [False, True],
                                     [None, 5.0], [4, 2, 1]))


def kernel_inputs(seed, n, m, d, h=4, h_kv=4, dv=8, logit_scale=1.0):
    rng = np.random.default_rng(seed)
    return (logit_scale * rng.normal(size=(h, n, d)), rng.normal(size=(h_kv, m, d)), rng.normal(size=(h_kv, m, dv)))


def check_against_dense(fn, q, k, v, kw, groups, what, flash=False):
    want_y, want_A, want_lse = dense_kernel_reference(
        q, k, v, causal=kw.get("causal", False), alignment=kw.get("causal_alignment", "top_left"),
        window=kw.get("window"), slopes=kw.get("alibi_slopes"), softcap=kw.get("softcap"), groups=groups,
        mask=kw.get("mask"), scale=kw.get("scale"))
    if flash:
        y, lse = fn(q, k, v, return_lse=True, **kw)
    else:
        y, A, lse = fn(q, k, v, return_weights=True, return_lse=True, **kw)
        close(A, want_A, rtol=ORACLE, what=f"{what}: weights vs dense formula")
        y2 = fn(q, k, v, **kw)  # the weight-free blocked path
        close(y2, want_y, rtol=ORACLE, what=f"{what}: y (no weights) vs dense formula")
    close(y, want_y, rtol=ORACLE, what=f"{what}: y vs dense formula")
    close_lse(lse, want_lse, f"{what}: lse vs scipy logsumexp")
    return y, lse


@pytest.mark.parametrize("n, m, d", [(65, 129, 16), (129, 65, 16)])
def test_every_option_combination_against_the_dense_formula(n, m, d):
    # small d keeps the 96 combinations fast; d = 64, 128, 256 are in test_tile_boundary_sizes
    q, k, v = kernel_inputs(n * 1000 + m, n, m, d, h_kv=4)
    slopes = _att.alibi_geometric_slopes(4)
    for causal, align, window, alibi, cap, h_kv in OPTION_GRID:
        kw = dict(causal=causal, causal_alignment=align, window=window, softcap=cap,
                  alibi_slopes=slopes if alibi else None, grouped_heads=True)
        what = f"N={n} M={m} d={d} {kw} H_kv={h_kv}"
        y, lse = check_against_dense(_att.softmax_attention, q, k[:h_kv], v[:h_kv], kw, 4 // h_kv, what)
        yf, lsef = _att.flash_attention(q, k[:h_kv], v[:h_kv], return_lse=True, block_q=64, block_k=128, **kw)
        assert_close(yf, y, rtol=1e-13, what=f"{what}: flash_attention vs softmax_attention")
        close_lse(lsef, lse, f"{what}: flash lse")


@pytest.mark.parametrize("n", [1, 63, 64, 65, 127, 129, 257])
@pytest.mark.parametrize("m", [1, 63, 64, 65, 127, 129, 257])
def test_tile_boundary_sizes(n, m):
    # every (N, M) pair of tile-boundary sizes, one option set per pair (rotating through the grid)
    causal, align, window, alibi, cap, h_kv = OPTION_GRID[(7 * n + m) % len(OPTION_GRID)]
    d = (64, 128, 256)[(n + m) % 3]
    q, k, v = kernel_inputs(n * 7 + m, n, m, d, h_kv=h_kv)
    kw = dict(causal=causal, causal_alignment=align, window=window, softcap=cap, grouped_heads=True,
              alibi_slopes=_att.alibi_geometric_slopes(4) if alibi else None)
    y, lse = check_against_dense(_att.softmax_attention, q, k, v, kw, 4 // h_kv, f"N={n} M={m} {kw}")
    yf, lsef = _att.flash_attention(q, k, v, return_lse=True, block_q=64, block_k=64, **kw)
    assert_close(yf, y, rtol=1e-13, what="flash_attention vs softmax_attention")
    close_lse(lsef, lse, "flash lse")


@pytest.mark.parametrize("n, m", [(1, 5), (5, 9), (9, 5), (6, 6)])
def test_loop_twins_with_every_option(n, m):
    q, k, v = kernel_inputs(n + 10 * m, n, m, 3, h_kv=4, dv=2)
    rng = np.random.default_rng(n * m)
    mask = rng.random((n, m)) < 0.7  # may leave a row empty: then y = 0, lse = −inf
    for causal, align, window, alibi, cap, h_kv in OPTION_GRID:
        kw = dict(causal=causal, causal_alignment=align, window=None if window is None else 2, softcap=cap,
                  alibi_slopes=_att.alibi_geometric_slopes(4) if alibi else None, grouped_heads=True)
        what = f"N={n} M={m} {kw} H_kv={h_kv}"
        args = (q, k[:h_kv], v[:h_kv])
        y, A, lse = _att.softmax_attention(*args, mask=mask, return_weights=True, return_lse=True, **kw)
        y2, A2, lse2 = _att.softmax_attention_loop(*args, mask=mask, return_weights=True, return_lse=True, **kw)
        close(y2, y, rtol=SELF, what=f"{what}: loop twin y")
        close(A2, A, rtol=SELF, what=f"{what}: loop twin A")
        close_lse(lse2, lse, f"{what}: loop twin lse")
        check_against_dense(_att.softmax_attention, *args, {**kw, "mask": mask}, 4 // h_kv, what)
        yf, lf = _att.flash_attention(*args, return_lse=True, block_q=2, block_k=3, **kw)
        yl, ll = _att.flash_attention_loop(*args, return_lse=True, block_q=2, block_k=3, **kw)
        assert_close(yl, yf, rtol=1e-13, what=f"{what}: flash loop twin")
        close_lse(ll, lf, f"{what}: flash loop twin lse")
        yw = _att.softmax_attention(*args, **kw)
        assert_close(yf, yw, rtol=1e-13, what=f"{what}: flash vs softmax")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_blocked_engine_with_tiny_blocks(monkeypatch, causal, align):
    # one query row per block and one batch element per group: every block computes its own key range
    import refimpl._blocking as blocking

    q, k, v = kernel_inputs(3, 40, 29, 8, h_kv=2)
    kw = dict(causal=causal, causal_alignment=align, window=6, softcap=2.0, grouped_heads=True,
              alibi_slopes=np.array([0.3, 0.1, 0.0, 0.7]))
    want = _att.softmax_attention(q, k, v, return_lse=True, **kw)
    for rows, budget in ((1, 1), (7, 50), (16, 10**6)):
        monkeypatch.setattr(blocking, "WORKSPACE_FLOATS", budget)
        monkeypatch.setattr(_att, "MIN_BLOCK_ROWS", rows)
        for got_y, want_y in zip(_att.softmax_attention(q, k, v, return_lse=True, **kw), want):
            assert np.array_equal(np.isneginf(got_y), np.isneginf(want_y))
            fin = np.isfinite(want_y)
            assert_close(got_y[fin], want_y[fin], rtol=1e-13, what=f"blocks of {rows} rows vs one block")


def test_alignment_tables():
    # the allowed pairs of a causal 3 x 5 mask: top-left j <= i, bottom-right j <= i + M - N
    q, k, v = np.zeros((3, 2)), np.zeros((5, 2)), np.eye(5)
    _, A_tl = _att.softmax_attention(q, k, v, causal=True, return_weights=True)
    _, A_br = _att.softmax_attention(q, k, v, causal=True, causal_alignment="bottom_right", return_weights=True)
    assert ((A_tl > 0).astype(int)).tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]
    assert ((A_br > 0).astype(int)).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # N > M, bottom-right: the first N - M queries see nothing (y = 0, lse = -inf), as FlashAttention
    y, lse = _att.softmax_attention(np.ones((5, 2)), np.ones((3, 2)), np.ones((3, 1)), causal=True,
                                    causal_alignment="bottom_right", return_lse=True)
    assert y[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert np.isneginf(lse[:2]).all() and np.allclose(lse[2:], np.log([1, 2, 3]) + np.sqrt(2))  # logits 2 / sqrt(2)
    # N = M: the two alignments agree
    q, k, v = kernel_inputs(1, 9, 9, 4)
    assert_close(_att.softmax_attention(q, k, v, causal=True, causal_alignment="bottom_right"),
                 _att.softmax_attention(q, k, v, causal=True), rtol=0.0, what="N = M alignments")


def test_grouped_heads_is_repeated_kv_and_mqa_is_broadcasting():
    q, k, v = kernel_inputs(2, 11, 13, 6, h=6, h_kv=3)
    y = _att.softmax_attention(q, k, v, grouped_heads=True, causal=True)
    y_rep = _att.softmax_attention(q, np.repeat(k, 2, axis=0), np.repeat(v, 2, axis=0), causal=True)
    assert_close(y, y_rep, rtol=1e-14, what="GQA vs repeated kv heads")
    # head 1 uses kv head 0 and head 2 uses kv head 1 (h // G with G = 2), not h % H_kv
    assert_close(y[1], _att.softmax_attention(q[1], k[0], v[0], causal=True), rtol=1e-14, what="head 1 -> kv 0")
    assert_close(y[2], _att.softmax_attention(q[2], k[1], v[1], causal=True), rtol=1e-14, what="head 2 -> kv 1")
    # multi-query: one kv head, with the flag or by plain broadcasting
    assert_close(_att.softmax_attention(q, k[:1], v[:1], grouped_heads=True),
                 _att.softmax_attention(q, k[:1], v[:1]), rtol=0.0, what="MQA flag vs broadcasting")
    # leading batch axes and a per-head mask (H = 6 heads on axis -3)
    qb, kb, vb = q[None].repeat(2, 0), k[None], v[None]
    mask = np.random.default_rng(0).random((6, 11, 13)) < 0.8
    yb = _att.softmax_attention(qb, kb, vb, grouped_heads=True, mask=mask)
    assert yb.shape == (2, 6, 11, 8)
    assert_close(yb[1], _att.softmax_attention(q, np.repeat(k, 2, 0), np.repeat(v, 2, 0), mask=mask), rtol=1e-14,
                 what="GQA with batch axes and a per-head mask")


def test_softcap_bounds_the_logits_and_large_cap_is_no_cap():
    q, k, v = kernel_inputs(4, 7, 9, 4, logit_scale=50.0)
    _, lse_cap = _att.softmax_attention(q, k, v, softcap=3.0, return_lse=True)
    assert np.all(lse_cap <= 3.0 + np.log(9) + 1e-12)  # every logit is below c: lse <= c + log M
    close(_att.softmax_attention(q, k, v, softcap=1e9), _att.softmax_attention(q, k, v), rtol=1e-12,
          what="softcap -> infinity is no cap")


@pytest.mark.parametrize("fn", [_att.softmax_attention, _att.softmax_attention_loop, _att.flash_attention,
                                _att.flash_attention_loop])
@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(grouped_heads=True, k=np.ones((3, 5, 4)), v=np.ones((3, 5, 2))), ValueError, "^k: grouped_heads: the H = 4"),
        (dict(grouped_heads=True, v=np.ones((1, 5, 2))), ValueError, "^v: expected the H_kv = 2"),
        (dict(grouped_heads=True, q=np.ones((5, 4)), k=np.ones((5, 4)), v=np.ones((5, 2))), ValueError, "^q: grouped_heads needs"),
        (dict(grouped_heads=1), TypeError, "^grouped_heads: "),
        (dict(causal_alignment="bottom-right"), ValueError, "^causal_alignment: "),
        (dict(causal_alignment=True), TypeError, "^causal_alignment: "),
        (dict(softcap=0.0), ValueError, "^softcap: "),
        (dict(softcap=-2.0), ValueError, "^softcap: "),
        (dict(softcap=np.inf), ValueError, "^softcap: "),
        (dict(softcap=np.nan), ValueError, "^softcap: "),
        (dict(softcap="big"), TypeError, "^softcap: "),
        (dict(return_lse=1), TypeError, "^return_lse: "),
        (dict(causal=np.int64(1)), TypeError, "^causal: "),
        (dict(grouped_heads=True, alibi_slopes=np.ones(3)), ValueError, "^alibi_slopes: "),
    ],
)
def test_kernel_options_bad_input(fn, kwargs, exc, match):
    args = dict(q=np.ones((4, 5, 4)), k=np.ones((2, 5, 4)), v=np.ones((2, 5, 2)), grouped_heads=True)
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(exc, match=match):
        fn(q, k, v, **args)


# ---------------------------------------------------------------------------------------------
# The blocked engine's two ways to shift the exponents: none where a bound on the logits allows
# it, the exact row max elsewhere (refimpl.attention._attend)
# ---------------------------------------------------------------------------------------------


def _extreme_logit_inputs(kind, n=300, m=280, d=16, seed=71):
    """Queries whose logits are moderate, huge (bound far above the safe exponent), all very
    negative (z below e^-256 unshifted), or mixed: one block of rows holds a few huge ones."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    k = u + 0.3 * rng.normal(size=(m, d))  # every key leans towards u
    v = rng.normal(size=(m, 3))
    q = rng.normal(size=(n, d))
    if kind == "huge":
        q = 300.0 * (u + 0.5 * q)  # logits ~ +300 … +600 (scale 1): bound ~ 1e3
    elif kind == "very negative":
        q = -450.0 * (u + 0.01 * q)  # every logit ~ −450: e^{s} unshifted sums to < e^-256
    elif kind == "mixed":
        q[100:104] *= 400.0  # four rows of the second block with logits in the hundreds
    return q, k, v


@pytest.mark.parametrize("kind", ["moderate", "huge", "very negative", "mixed"])
@pytest.mark.parametrize("causal", [False, True])
def test_shift_free_and_exact_max_blocks_against_the_dense_formula(monkeypatch, kind, causal):
    monkeypatch.setattr(_att, "MIN_BLOCK_ROWS", 64)  # several blocks of query rows
    monkeypatch.setattr(_att, "per_block", lambda floats, minimum=1: max(minimum, 64 * 280 // max(1, floats)))
    q, k, v = _extreme_logit_inputs(kind)
    kw = dict(causal=causal, scale=1.0)
    exact, real = [], _att._bias_and_mask  # called only on the exact path (the shifted exponentials)
    monkeypatch.setattr(_att, "_bias_and_mask", lambda *a, **kw: exact.append(a[4]) or real(*a, **kw))  # first rows
    _att.softmax_attention(q, k, v, **kw)
    want = {"moderate": [], "huge": list(range(0, 300, 64)), "very negative": list(range(0, 300, 64)),
            "mixed": [64]}[kind]
    assert sorted(exact) == want, (kind, exact)  # the blocks run largest first
    check_against_dense(_att.softmax_attention, q[None], k[None], v[None], kw, 1, f"{kind} logits, causal={causal}")
    # the exact row max everywhere (no block is shift-free) gives the same numbers to rounding
    y, A, lse = _att.softmax_attention(q, k, v, return_weights=True, return_lse=True, **kw)
    monkeypatch.setattr(_att, "_EXP_SAFE", -np.inf)
    y2, A2, lse2 = _att.softmax_attention(q, k, v, return_weights=True, return_lse=True, **kw)
    assert_close(y, y2, rtol=1e-13, what=f"{kind}: shift-free vs exact max, y")
    assert_close(A, A2, rtol=1e-13, what=f"{kind}: shift-free vs exact max, A")
    close_lse(lse, lse2, f"{kind}: shift-free vs exact max, lse")


@pytest.mark.parametrize("kind", ["moderate", "huge", "very negative", "mixed"])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_pass_takes_the_forward_blocks_paths(monkeypatch, kind, causal):
    # softmax_attention_vjp recomputes P as the forward pass does: unshifted where the logits are
    # bounded, with the row max where not (or where a row's sum underflows); both give the same
    # gradients to rounding, and the loop twin (the naive Jacobian) agrees
    from refimpl import _vjp

    q, k, v = _extreme_logit_inputs(kind)
    dy = np.random.default_rng(72).normal(size=(q.shape[0], v.shape[-1]))
    kw = dict(causal=causal, scale=1.0, return_intermediates=True)
    exact, real = [], _att._bias_and_mask
    monkeypatch.setattr(_att, "_bias_and_mask", lambda *a, **k_: exact.append(a[4]) or real(*a, **k_))
    *grads, extra = _vjp.softmax_attention_vjp(q, k, v, dy, **kw)
    B = _vjp._ATT_BLOCK
    want = {"moderate": [], "huge": list(range(0, 300, B)), "very negative": list(range(0, 300, B)), "mixed": [0]}[kind]
    assert sorted(exact) == want, (kind, exact)
    monkeypatch.setattr(_att, "_EXP_SAFE", -np.inf)  # every block shifted by its row max
    *grads2, extra2 = _vjp.softmax_attention_vjp(q, k, v, dy, **kw)
    loop = _vjp.softmax_attention_vjp_loop(q, k, v, dy, **kw)
    for name, a, b, c in zip(("dq", "dk", "dv"), grads, grads2, loop[:3]):
        assert_close(a, b, rtol=1e-13, what=f"{kind}: unshifted vs shifted blocks, {name}")
        assert_close(a, c, rtol=1e-11, what=f"{kind}: vectorized vs loop twin, {name}")
    close_lse(extra["lse"], extra2["lse"], f"{kind}: unshifted vs shifted blocks, lse")
    assert_close(extra["D"], extra2["D"], rtol=1e-13, what=f"{kind}: unshifted vs shifted blocks, D")


# ---------------------------------------------------------------------------------------------
# Blocks in threads with one-threaded BLAS (refimpl.attention._attend, _blocking.one_thread_blas)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(causal=True),
        dict(causal=True, causal_alignment="bottom_right"),
        dict(window=37),
        dict(alibi_slopes=np.array([0.5, 0.25]), causal=True),
        dict(softcap=2.0),
        dict(mask="random"),
        dict(scale=40.0),  # huge logits: the exact-max blocks, in the threads too
    ],
    ids=["plain", "causal", "bottom-right", "window", "alibi", "softcap", "mask", "exact-max"],
)
def test_blocks_in_threads_are_bitwise_the_unthreaded_ones(monkeypatch, kw):
    import refimpl._blocking as blocking

    rng = np.random.default_rng(91)
    q, k, v = rng.normal(size=(2, 200, 8)), rng.normal(size=(2, 230, 8)), rng.normal(size=(2, 230, 3))
    kw = dict(kw)
    if kw.get("mask") == "random":
        kw["mask"] = rng.random((200, 230)) < 0.7
    monkeypatch.setattr(_att, "MIN_BLOCK_ROWS", 16)  # many blocks
    monkeypatch.setattr(_att, "per_block", lambda floats, minimum=1: max(minimum, 16 * 230 // max(1, floats)))
    outs, real = {}, blocking.one_thread_blas
    monkeypatch.setattr(_att, "_THREADED_LOGITS", 1)
    for threads in (1, 2, 3):
        monkeypatch.setattr(blocking, "THREADS", threads)
        entered = []
        monkeypatch.setattr(blocking, "one_thread_blas", lambda: entered.append(1) or real())
        outs[threads] = _att.softmax_attention(q, k, v, return_weights=True, return_lse=True, **kw)
        assert len(entered) == blocking.blas_threads_settable()  # the threaded path, whatever the thread count
        y = _att.softmax_attention(q, k, v, **kw)  # without weights: each thread's own workspace
        assert np.array_equal(y, outs[threads][0])
    for threads in (2, 3):
        for a, b in zip(outs[1], outs[threads]):
            assert np.array_equal(a, b), (threads, kw)
    check_against_dense(_att.softmax_attention, q, k, v, kw, 1, f"threaded blocks {kw}")


def test_the_thread_count_changes_no_bit_at_the_default_block_sizes(monkeypatch):
    """Mid-size problems (few blocks of the default size) are cut smaller to run in threads: the cut, and
    whether BLAS is held to one thread, must not depend on the number of threads (a 1000-row problem
    once differed by 2e-16 between one thread and two); the backward pass likewise (its parts)."""
    import refimpl._blocking as blocking
    from refimpl._vjp import softmax_attention_vjp

    rng = np.random.default_rng(93)
    q, k, v = rng.normal(size=(3, 1000, 64))
    q2, k2, v2, dy = rng.normal(size=(4, 2, 1500, 32))
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(blocking, "THREADS", threads)
        runs.append([_att.softmax_attention(q, k, v), _att.softmax_attention(q, k, v, causal=True),
                     *_att.softmax_attention(q, k, v, return_weights=True),
                     *softmax_attention_vjp(q2, k2, v2, dy, causal=True)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


def test_without_a_settable_blas_the_blocks_stay_in_one_thread(monkeypatch):
    """Another BLAS than OpenBLAS (its thread count unknown to refimpl): the blocks run one after the
    other in the caller, as large as the workspace allows (not cut smaller for threads), the same
    with any thread count; with OpenBLAS the same problem is cut into blocks of max(64, N / 8) rows
    (largest first), with one thread as with two."""
    import refimpl._blocking as blocking

    rng = np.random.default_rng(92)
    q, k, v = rng.normal(size=(3, 2, 300, 8))
    monkeypatch.setattr(_att, "_THREADED_LOGITS", 1)
    rows, real = [], _att._weights_block  # the query rows of every block
    monkeypatch.setattr(_att, "_weights_block", lambda q, *a, **kw: rows.append(q.shape[-2]) or real(q, *a, **kw))
    monkeypatch.setattr(blocking, "THREADS", 1)
    settable = blocking.blas_threads_settable()
    _att.softmax_attention(q, k, v, causal=True)
    rows_settable = list(rows)
    monkeypatch.setattr(blocking, "_BLAS", None)
    assert not blocking.blas_threads_settable()
    monkeypatch.setattr(blocking, "take_turns", lambda *a, **kw: pytest.fail("blocks sent to threads"))
    outs, cuts = [], []
    for threads in (1, 2):
        monkeypatch.setattr(blocking, "THREADS", threads)
        rows.clear()
        outs.append(_att.softmax_attention(q, k, v, causal=True))
        cuts.append(list(rows))
    assert np.array_equal(outs[0], outs[1]) and cuts[0] == cuts[1]
    assert cuts[0] == [300] and (not settable or rows_settable == [44, 64, 64, 64, 64])  # max(64, 300 / 8) rows


def test_an_overflowing_output_is_refused_not_returned():
    """Finite inputs whose weighted sum Σ_j e_ij v_j overflows (M · |v| > 1.8e308): the vectorized
    form must refuse, not return inf (an independent tester found [[inf]] where the loop twin,
    which sums the normalized weights, gives the representable answer 1e306)."""
    q, k, v = np.zeros((1, 1)), np.zeros((1000, 1)), np.full((1000, 1), 1e306)
    with pytest.raises(ValueError, match="^v .*not representable"):
        _att.softmax_attention(q, k, v)
    assert _att.softmax_attention_loop(q, k, v)[0, 0] == pytest.approx(1e306, rel=1e-12)


@pytest.mark.parametrize("fn", ["softmax_attention", "softmax_attention_loop", "flash_attention", "flash_attention_loop"])
def test_a_logit_that_overflows_before_the_soft_cap_is_refused(fn):
    """q·k = 1e300 − 1e300 + … overflows to inf or NaN depending on the order of the sum; the cap
    c·tanh(s/c) would turn it into ±c, a finite and wrong weight (the dense answer is 1.9933)."""
    q = np.array([[1e300, 1e300]])
    k = np.array([[1e300, -1e300], [1.0, 1.0]])
    v = np.array([[1.0], [2.0]])
    with pytest.raises(ValueError, match="^q, k, scale: a logit scale·q_i·k_j of a key the row may attend overflows"):
        getattr(_att, fn)(q, k, v, softcap=5.0, scale=1.0)
    k_ok = np.array([[1e-300, 1e-300], [1.0, 1.0]])  # logits 2e-0 and 2e300: finite, capped to 5
    y = getattr(_att, fn)(q, k_ok, v, softcap=5.0, scale=1.0)
    w = np.exp([5 * np.tanh(2.0 / 5), 5.0])
    assert y[0, 0] == pytest.approx((w[0] * 1.0 + w[1] * 2.0) / w.sum(), rel=1e-13)


def _overflow_forms(q, k, v, **kw):
    """Every forward form (and the vectorized backward pass) on one problem of shape (N, d), as callables."""
    fa = lambda a: a[None, :, None, :]  # noqa: E731  FlashAttention's (batch, seqlen, heads, d)
    fa_kw = dict(causal=kw.get("causal", False), softmax_scale=kw.get("scale"), softcap=kw.get("softcap", 0.0))
    return {
        "softmax_attention": lambda: _att.softmax_attention(q, k, v, **kw),
        "softmax_attention_loop": lambda: _att.softmax_attention_loop(q, k, v, **kw),
        "attention_weights": lambda: _att.attention_weights(q, k, causal=kw.get("causal", False),
                                                            scale=kw.get("scale")) @ v,
        "flash_attention": lambda: _att.flash_attention(q, k, v, block_q=2, block_k=2, **kw),
        "flash_attention_loop": lambda: _att.flash_attention_loop(q, k, v, block_q=2, block_k=2, **kw),
        "flash_attn_func": lambda: _att.flash_attn_func(fa(q), fa(k), fa(v), **fa_kw)[0, :, 0],
        "flash_attn_func_loop": lambda: _att.flash_attn_func_loop(fa(q), fa(k), fa(v), **fa_kw)[0, :, 0],
        "softmax_attention_vjp": lambda: _att.softmax_attention_vjp(q, k, v, np.ones((len(q), v.shape[1])), **kw)[2],
    }


def _overflowing(case):
    """Finite q, k whose logits q·k overflow float64 at keys every row may attend."""
    rng = np.random.default_rng(1)
    q, k = np.abs(rng.normal(size=(4, 3))), np.abs(rng.normal(size=(5, 3)))
    if case == "all -inf":  # every logit ≈ −1e320: the limit is v at the least negative key, not y = 0
        return -1e160 * q, 1e160 * k
    if case == "all +inf":
        return 1e160 * q, 1e160 * k
    if case == "inf - inf":  # 1e400 − 1e400 inside the dot product: NaN
        return np.tile([1e200, 1e200, 0.0], (4, 1)), np.tile([1e200, -1e200, 0.0], (5, 1))
    q[3], k[3] = [1e200, 0.0, 0.0], [-1e200, 0.0, 0.0]  # "one key": row 3's logit of key 3 alone is −inf
    k[np.arange(5) != 3, 0] = 0.0
    return q, k


@pytest.mark.parametrize("case", ["all -inf", "all +inf", "inf - inf", "one key"])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_a_logit_that_overflows_is_refused_not_taken_for_a_forbidden_key(case, softcap):
    """Finite q, k whose logits overflow float64. The vectorized exact path could not tell a logit that overflowed to
    −∞ from a forbidden key: softmax_attention, flash_attention and the backward pass returned the empty-row output
    y = 0 (and attention_weights rows summing to 0, or NaN for +∞) without an error, where the loop twin refused. Every
    form now refuses, naming q, k and scale (flash_attn_func through the guard, which names the extreme ones)."""
    q, k = _overflowing(case)
    v = np.random.default_rng(2).normal(size=(5, 2))
    kw = dict(causal=case == "one key", scale=1.0) if softcap is None else dict(causal=case == "one key", scale=1.0,
                                                                                 softcap=softcap)
    for name, call in _overflow_forms(q, k, v, **kw).items():
        if softcap is not None and name == "attention_weights":
            continue  # no soft cap there
        with pytest.raises(ValueError, match=r"^q, k, scale: a logit .* overflows float64|^q \(.*k \(.*not representable"):
            call()
        assert name  # (for the traceback)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_logit_that_overflows_at_a_forbidden_key_is_harmless(sign, softcap):
    """The check looks at the allowed keys only, as the loop twins (which never compute a forbidden logit) do: a
    logit that overflows after the causal diagonal leaves every form equal to the answer without that key."""
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 4, 3))
    q[0], k[3] = [1e200, 0.0, 0.0], [sign * 1e200, 0.0, 0.0]  # logit (0, 3) overflows; key 3 is after query 0
    kw = dict(causal=True, scale=1.0) if softcap is None else dict(causal=True, scale=1.0, softcap=softcap)
    with np.errstate(over="ignore", invalid="ignore"):
        s = q @ k.T  # the dense oracle: the overflowed entry is forbidden and replaced by −∞ below
    if softcap is not None:
        s = softcap * np.tanh(np.where(np.isfinite(s), s, 0.0) / softcap)
    want = scipy.special.softmax(np.where(np.tri(4, 4, dtype=bool), s, -np.inf), axis=-1) @ v
    assert_close(want[0], v[0], rtol=SELF)  # query 0 sees key 0 only
    for name, call in _overflow_forms(q, k, v, **kw).items():
        if softcap is not None and name == "attention_weights":
            continue
        got = call()
        if name == "softmax_attention_vjp":
            assert np.all(np.isfinite(got)), name
        else:
            assert_close(got, want, rtol=ORACLE, what=name)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("case", ["scale·q overflows", "q·k overflows"])
def test_a_representable_logit_is_formed_in_the_order_that_does_not_overflow(case, softcap, causal):
    """The vectorized forms formed (scale q_i)·k_j and the loop twins scale·(q_i·k_j): with q ~ 2^1020, k ~ 2^-1015,
    scale = 2^6 (scale·q overflows, the logits 2^11 q·k do not) the vectorized forms refused and the loops answered;
    with q, k ~ 2^520, scale = 2^-1041 (q·k overflows, the logits q·k / 2 do not) the reverse. Every forward form
    now tries the other order where the first is not finite, and all answer: powers of two keep the logits exactly
    those of the moderate problem (an independent reviewer's finding: q = 1e300, k = 1e-300, scale = 1e10)."""
    rng = np.random.default_rng(7)
    q0, k0, v = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(4, 2))  # N = M: one causal alignment
    q0[np.abs(q0) < 0.1], k0[np.abs(k0) < 0.1] = 0.5, -0.5  # |entries| >= 0.1: k ~ 2^-1015 stays normal
    if case == "scale·q overflows":
        q, k, scale, moderate = 2.0**1020 * q0, 2.0**-1015 * k0, 2.0**6, 2.0**11
        with np.errstate(over="ignore"):
            assert not np.any(np.isfinite(scale * q))
    else:
        q, k, scale, moderate = 2.0**520 * q0, 2.0**520 * k0, 2.0**-1041, 0.5
        with np.errstate(over="ignore", invalid="ignore"):
            assert not np.any(np.isfinite(q @ k.T))
    kw = dict(causal=causal, scale=scale) if softcap is None else dict(causal=causal, scale=scale, softcap=softcap)
    expected = _att.softmax_attention(q0, k0, v, **{**kw, "scale": moderate})
    forms = _overflow_forms(q, k, v, **kw)
    del forms["softmax_attention_vjp"]  # a backward pass: its own test (test_vjp)
    for name, call in forms.items():
        if softcap is not None and name == "attention_weights":
            continue  # no soft cap there
        np.testing.assert_allclose(call(), expected, rtol=1e-13, atol=1e-15, err_msg=name)
    # a logit that overflows in both orders is still refused, by the vectorized form and its loop twin alike
    q_both = np.array([[2.0**1020, 2.0**1020]])
    k_both = np.array([[2.0**10, -2.0**10], [1.0, 1.0]])  # (scale·q)·k and scale·(q·k): inf − inf; the exact logit is 0
    for fn in (_att.softmax_attention, _att.softmax_attention_loop, _att.flash_attention, _att.flash_attention_loop):
        with pytest.raises(ValueError, match="^q, k, scale: a logit .* in the products that form it"):
            fn(q_both, k_both, v[:2], scale=2.0**6)


def test_the_overflow_check_costs_nothing_on_ordinary_inputs(monkeypatch):
    """The check is one pass over a block's logits; it runs only where the logit bound ‖scale q_i‖ max_j ‖k_j‖ exceeds
    1e300 or is not finite (extreme inputs: also where a squared norm overflows, |scale·q| or |k| above ~1e154).
    Moderate logits (the unshifted path), large ones (the exact row max), a soft cap, a row
    with no key and the fallback of a tiny row sum never reach it."""
    rng = np.random.default_rng(4)
    q, k, v = rng.normal(size=(3, 300, 8))
    mask = np.ones((300, 300), dtype=bool)
    mask[7] = False  # a row with no key: the unshifted block falls back to the exact path
    calls = []
    monkeypatch.setattr(_att, "_refuse_overflowed", lambda s, allowed, other=None: calls.append(s.shape))
    for kw in (dict(), dict(scale=1e3), dict(softcap=2.0, scale=1e100), dict(mask=mask), dict(causal=True, scale=1e6)):
        _att.softmax_attention(q, k, v, **kw)
        if "mask" not in kw:
            _att.flash_attention(q, k, v, **kw)
    _att.attention_weights(q, k, scale=1e3)
    assert calls == []
    with pytest.raises(ValueError, match="not representable"):  # bound 1e400: checked (the stub lets the NaN through)
        _att.softmax_attention(1e200 * q, 1e200 * k, v)
    assert calls


def test_flash_attention_block_q_beyond_the_queries_is_not_padded():
    """The query tiles were padded to ceil(N / block_q) · block_q rows: memory and time grew with block_q, not N
    (block_q = 1e6 for 5 queries: 48 MB and seconds; 1e8: MemoryError; 1e20: NumPy's 'Maximum allowed dimension
    exceeded', naming no argument). A block_q above both N and 1024 is one tile of the N queries."""
    import tracemalloc

    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 2, 5, 3))
    one_tile = _att.flash_attention(q, k, v, block_q=5, block_k=2, causal=True, return_lse=True,
                                    return_intermediates=True)
    tracemalloc.start()
    try:
        for bq in (10**6, 10**20):
            got = _att.flash_attention(q, k, v, block_q=bq, block_k=2, causal=True, return_lse=True,
                                       return_intermediates=True)
            assert np.array_equal(got[0], one_tile[0]) and np.array_equal(got[1], one_tile[1])
            assert all(np.array_equal(got[2][n], one_tile[2][n]) for n in got[2])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # well under a MiB (block_q = 1e6 padded to 2 · 1e6 · 3 floats: 48 MB)
    assert_close(one_tile[0], softmax_attention(q, k, v, causal=True), rtol=SELF)
    y = _att.flash_attention(q, k, v, block_q=1024)  # up to 1024 the padded tile is kept as given
    assert_close(y, softmax_attention(q, k, v), rtol=SELF)


@pytest.mark.parametrize("fn", ["softmax_attention", "softmax_attention_loop", "attention_weights", "flash_attention",
                                "multihead_attention", "softmax_attention_vjp"])
def test_a_ragged_argument_is_named(fn):
    """A ragged mask reached np.asarray outside the validation helpers, and the _vjp forms took np.shape of their
    raw inputs: NumPy's 'setting an array element with a sequence' named no argument."""
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(3, 2, 2))
    f = getattr(_att, fn)
    if fn == "multihead_attention":
        x, w = rng.normal(size=(2, 4)), np.eye(4)
        with pytest.raises(TypeError, match="^mask: could not convert to an array"):
            f(x, w, w, w, w, 2, mask=[[True, False], [True]])
        with pytest.raises(TypeError, match="^x: could not convert to an array"):
            f([[1.0, 2.0], [3.0]], w, w, w, w, 2)
        return
    extra = (v,) if fn.endswith("_vjp") else ()
    if fn != "flash_attention":
        with pytest.raises(TypeError, match="^mask: could not convert to an array"):
            f(q, k, *(() if fn == "attention_weights" else (v,)), *extra, mask=[[True, False], [True]])
    with pytest.raises(TypeError, match="^q: could not convert to an array"):
        f([[1.0, 2.0], [3.0]], k, *(() if fn == "attention_weights" else (v,)), *extra)


@pytest.mark.parametrize("fn", [softmax_attention, softmax_attention_loop])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_attention_is_nadaraya_watson_with_key_weights(fn, causal, scale):
    """Chapter 4, §4.3: softmax attention is Nadaraya–Watson regression with the Gaussian kernel
    e^{−‖q−k‖²/2τ} times the key weights e^{‖k‖²/2τ} (τ = 1/scale); without the key weights only for keys
    of equal norm. Oracle: the kernel smoother written out here, no softmax and no q·k product."""
    rng = np.random.default_rng(21)
    d = 5
    q = rng.normal(size=(7, d))
    k = rng.normal(size=(9, d)) * rng.uniform(0.3, 1.5, size=(9, 1))  # keys of unequal norms
    v = rng.normal(size=(9, 3))
    tau = np.sqrt(d) if scale is None else 1.0 / scale
    allowed = np.tri(7, 9, dtype=bool) if causal else np.ones((7, 9), bool)

    def nadaraya_watson(keys, key_weights):
        K = np.exp(-((q[:, None, :] - keys[None]) ** 2).sum(-1) / (2 * tau)) * key_weights * allowed
        return K @ v / K.sum(1, keepdims=True)

    y = fn(q, k, v, causal=causal, scale=scale)
    assert_close(y, nadaraya_watson(k, np.exp((k**2).sum(1) / (2 * tau))), rtol=ORACLE)
    assert np.abs(y - nadaraya_watson(k, 1.0)).max() > 1e-2  # the key weights matter for unequal norms
    k_eq = k / np.linalg.norm(k, axis=1, keepdims=True) * 1.3  # equal norms: the plain Gaussian kernel
    assert_close(fn(q, k_eq, v, causal=causal, scale=scale), nadaraya_watson(k_eq, 1.0), rtol=ORACLE)


@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"window": 40, "causal": True}, {"mask": "rows"}],
                         ids=["all keys", "causal", "window", "mask with empty rows"])
@pytest.mark.parametrize("n", [40, 600])
def test_weights_of_every_entry_written_or_zero(kw, n):
    """return_weights: the weights array starts uninitialized when every block spans all keys (the blocks then write
    every entry, forbidden ones as 0), zeroed otherwise. Memory of the same size full of NaN is freed just before
    the call, so that an entry left unwritten would likely show; n = 600 is cut into threaded blocks (the causal and
    window forms into blocks with key ranges of their own). Oracle: the loop twin."""
    rng = np.random.default_rng(n)
    q, k, v = rng.normal(size=(3, n, 6))
    kw = dict(kw)
    if kw.get("mask") == "rows":
        mask = rng.random((n, n)) < 0.5
        mask[::7] = False  # rows that see no key: weights 0, output 0
        kw["mask"] = mask
    for _ in range(3):
        junk = np.full((n, n), np.nan)
        del junk
        y, A = softmax_attention(q, k, v, return_weights=True, **kw)
        assert np.all(np.isfinite(A))
        if n <= 40 or _ == 0:
            y_loop, A_loop = softmax_attention_loop(q, k, v, return_weights=True, **kw)
            assert_close(A, A_loop, rtol=SELF)
            assert_close(y, y_loop, rtol=SELF)
