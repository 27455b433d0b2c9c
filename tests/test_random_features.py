"""Tests of :mod:`refimpl.random_features`: linear attention, FAVOR+, RFA, Reformer LSH, reversible blocks.

Exact checks (float64, :mod:`refimpl._testing` tolerances):

* every loop twin (RNNs one token at a time, LSH per query) against its vectorized function;
* the linear-time paths against quadratic forms written here with ``np.einsum`` and ``np.tril``
  (masked quadratic linear attention, FAVOR features computed here from the same projection,
  the decay-masked quadratic form of gated RFA built from explicit powers of the gate);
* LSH attention with one round and two chunks against full shared-QK attention computed by
  :func:`refimpl.attention.softmax_attention` with the self-mask;
* the reversible inverse.

Statistical checks (fixed seeds; bands in Monte Carlo standard errors, ``mc_band``):

* FAVOR+ positive and trig features are unbiased for exp(x·y), and their variance matches
  Lemma 2 of Choromanski et al. (2021); the band for a sample variance uses the sample's own
  fourth moment;
* orthogonal features have lower MSE than iid features at the same m (paired difference > 4 SE);
* the trig features' relative error explodes where exp(x·y) is small, the positive ones' vanishes;
* random Fourier features estimate exp(−‖x−y‖²/(2σ²)) (this pins the σ convention);
* LSH collision probability for two buckets equals 1 − θ/π within a binomial band;
* the attention error of Performer decays like m^{-1/2} (log-log slope in [−0.65, −0.35]).
"""

from __future__ import annotations

import math
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl._blocking as _blocking
import refimpl.random_features as rf_module
from refimpl._testing import ORACLE, SELF, mc_band
from refimpl._validate import row_norms
from refimpl.attention import softmax_attention
from refimpl.random_features import (
    KINDS,
    SELF_ATTENTION_VALUE,
    elu_plus_one,
    favor_features,
    favor_features_loop,
    linear_attention,
    linear_attention_loop,
    lsh_attention,
    lsh_attention_loop,
    lsh_hash,
    orthogonal_gaussian,
    performer_attention,
    performer_attention_loop,
    performer_attention_quadratic,
    reversible_forward,
    reversible_inverse,
    rfa_attention,
    rfa_attention_loop,
    rff_features,
)

from _recording import recorder  # noqa: E402

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, _ = recorder()


def qkv(seed, n=9, d=4, dv=3, batch=(), m=None):
    rng = np.random.default_rng(seed)
    m = n if m is None else m
    return rng.normal(size=(*batch, n, d)), rng.normal(size=(*batch, m, d)), rng.normal(size=(*batch, m, dv))


def quadratic_oracle(phi_q, phi_k, v, causal, decay=None):
    """Eq. (12.1) with κ = φ(q)·φ(k), written with einsum and an explicit lower triangle."""
    a = np.einsum("...ic,...jc->...ij", phi_q, phi_k)
    if causal:
        a = np.tril(a)
    if decay is not None:
        a = a * decay
    return np.einsum("...ij,...jc->...ic", a, v) / a.sum(-1, keepdims=True)


def elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


# ---------------------------------------------------------------------------------------------
class TestLinearAttention:
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("seed", range(3))
    def test_loop_twin_and_quadratic_oracle(self, seed, causal):
        q, k, v = qkv(seed, n=11, batch=(2,))
        y = linear_attention(q, k, v, causal=causal)
        close(y, linear_attention_loop(q, k, v, causal=causal), rtol=SELF, what="linear_attention vs RNN loop")
        close(y, quadratic_oracle(elu1(q), elu1(k), v, causal), rtol=ORACLE, what="linear_attention vs masked quadratic")

    def test_non_causal_with_more_keys(self):
        q, k, v = qkv(3, n=5, m=8)
        close(linear_attention(q, k, v), quadratic_oracle(elu1(q), elu1(k), v, False), rtol=ORACLE, what="linear N != M")

    @pytest.mark.parametrize("one_thread", [1, 40, 2**19])
    @pytest.mark.parametrize("group", [1, 2, 10**9])
    @pytest.mark.parametrize("chunk", [1, 3, 4, 128])
    @pytest.mark.parametrize("n", [1, 7, 12])
    def test_chunked_prefix_sums_with_padding(self, monkeypatch, chunk, n, group, one_thread):
        monkeypatch.setattr(_blocking, "WORKSPACE_FLOATS", group)  # 1: one chunk per group; 10**9: one group
        # _ONE_THREAD = 1 cuts every stacked product into one-row pieces, 40 into pieces of 1 or 2 rows
        monkeypatch.setattr(rf_module, "_ONE_THREAD", one_thread)
        q, k, v = qkv(chunk + n, n=n, batch=(3, 1))
        k = k[0]  # broadcast batch
        y = rf_module._kernel_attention(elu1(q), elu1(k), v, True, chunk)
        close(y, quadratic_oracle(elu1(q), elu1(np.broadcast_to(k, q.shape)), v, True), rtol=ORACLE, what="chunked causal vs quadratic")

    @pytest.mark.parametrize("one_thread", [1, 2**19])
    @pytest.mark.parametrize("group", [1, 10**9])
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 129, 200])
    def test_default_chunks_vs_dense(self, monkeypatch, n, causal, group, one_thread):
        """The default chunk length, N below it, equal to it and not a multiple of it; groups of one
        chunk or all chunks; stacked products cut into one-row pieces or whole; non-causal also with
        more keys than queries (M not a multiple either)."""
        monkeypatch.setattr(_blocking, "WORKSPACE_FLOATS", group)
        monkeypatch.setattr(rf_module, "_ONE_THREAD", one_thread)
        q, k, v = qkv(n, n=n, d=5, dv=3, batch=(2,))
        y = linear_attention(q, k, v, causal=causal)
        close(y, quadratic_oracle(elu1(q), elu1(k), v, causal), rtol=ORACLE, what="chunked linear attention vs dense")
        if n <= 65:
            close(y, linear_attention_loop(q, k, v, causal=causal), rtol=SELF, what="chunked linear attention vs loop")
        if not causal:
            q2, k2, v2 = qkv(n + 1, n=n, m=n + 70, d=5, dv=3)
            close(linear_attention(q2, k2, v2), quadratic_oracle(elu1(q2), elu1(k2), v2, False), rtol=ORACLE,
                  what="chunked linear attention, M != N, vs dense")

    @pytest.mark.parametrize("one_thread", [1, 7, 50, 2**19])
    def test_stacked_products_in_pieces(self, monkeypatch, one_thread):
        """_stacked equals np.matmul whatever the piece size: transposed, broadcast and out= operands."""
        monkeypatch.setattr(rf_module, "_ONE_THREAD", one_thread)
        rng = np.random.default_rng(one_thread)
        a = np.swapaxes(rng.normal(size=(2, 3, 5, 6)), -1, -2)  # (2, 3, 6, 5), not contiguous
        b = rng.normal(size=(3, 5, 4))  # broadcast over the first axis
        ref = np.matmul(a, b)
        np.testing.assert_allclose(rf_module._stacked(a, b), ref, rtol=1e-14, atol=1e-14)
        buf = np.full((2, 3, 6, 4), np.nan)
        assert rf_module._stacked(a, b, out=buf) is buf
        np.testing.assert_allclose(buf, ref, rtol=1e-14, atol=1e-14)

    def test_callable_feature_map(self):
        q, k, v = qkv(4)
        fm = lambda x: np.concatenate([np.exp(x), np.exp(-x)], axis=-1)  # noqa: E731
        y = linear_attention(q, k, v, feature_map=fm, causal=True)
        close(y, quadratic_oracle(fm(q), fm(k), v, True), rtol=ORACLE, what="linear attention, callable φ")
        close(y, linear_attention_loop(q, k, v, feature_map=fm, causal=True), rtol=SELF, what="linear loop, callable φ")

    def test_elu_plus_one(self):
        x = np.array([-800.0, -1.0, 0.0, 2.0])
        np.testing.assert_array_equal(elu_plus_one(x), [0.0, math.exp(-1.0), 1.0, 3.0])

    def test_peak_memory_causal_has_no_n_c_dv_intermediate(self):
        n, d = 4096, 64
        q, k, v = qkv(5, n=n, d=d, dv=d)
        tracemalloc.start()
        try:
            linear_attention(q, k, v, causal=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # the plain cumsum of outer products alone would need an (N, C, dv) array, 134 MB here; we use
        # about ten (N, d) arrays (inputs, features, output: 2 MB each) and a few MB of chunk buffers
        assert peak < 0.25 * n * d * d * 8

    @pytest.mark.parametrize("method", ["linear", "performer"])
    def test_causal_memory_per_token_is_the_chapter_inventory(self, method, monkeypatch):
        # chapter 12, §12.5: in one thread the stages run group by group, and per token the call holds the
        # output (dv numbers) and, for Performer, the keys' features (C), 8 bytes each: 512 and 1024 bytes for
        # C = d = dv = 64 (the states, C·(dv+1)/c per token, and linear attention's φ(K)ᵀ only for one group).
        # The slope between two sizes is measured in one thread (no second workspace) and must stay
        # within 1%, so that a change of the memory layout is noticed here and in the chapter.
        monkeypatch.setattr(_blocking, "THREADS", 1)
        n_feat, dv = 64, 64
        c = rf_module._causal_chunk(n_feat)
        per_token = 8 * (dv + (n_feat if method == "performer" else 0))
        assert c == 32 and per_token == {"linear": 512, "performer": 1024}[method]
        peaks = []
        for n in (2048, 4096):
            q, k, v = qkv(7, n=n, d=64, dv=dv)
            tracemalloc.start()
            try:
                if method == "linear":
                    linear_attention(q, k, v, causal=True)
                else:
                    performer_attention(q, k, v, n_features=n_feat, rng=0, causal=True)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        slope = (peaks[1] - peaks[0]) / 2048
        assert abs(slope / per_token - 1) < 0.01, (method, slope, per_token)

    @settings(max_examples=25)
    @given(st.integers(0, 10**6), st.integers(1, 12), st.integers(0, 11))
    def test_causality(self, seed, n, t):
        t = min(t, n - 1)
        q, k, v = qkv(seed, n=n)
        y = linear_attention(q, k, v, causal=True)
        q2, k2, v2 = q.copy(), k.copy(), v.copy()
        q2[t + 1 :] += 1.0
        k2[t + 1 :] -= 2.0
        v2[t + 1 :] *= 3.0
        np.testing.assert_array_equal(linear_attention(q2, k2, v2, causal=True)[: t + 1], y[: t + 1])

    def test_constant_values_are_reproduced(self):
        q, k, _ = qkv(6)
        v = np.full((9, 2), 1.5)
        close(linear_attention(q, k, v, causal=True), v, rtol=ORACLE, what="linear attention of constant v")


# ---------------------------------------------------------------------------------------------
def favor_oracle(x, w, kind):
    """Eqs. (12.6)/(12.7) without any shift (small inputs only)."""
    m = w.shape[0]
    wx = x @ w.T
    sq = 0.5 * np.sum(x**2, axis=-1, keepdims=True)
    if kind == "positive":
        return np.exp(wx - sq) / np.sqrt(m)
    return np.exp(sq) * np.concatenate([np.sin(wx), np.cos(wx)], axis=-1) / np.sqrt(m)


class TestFavorFeatures:
    @pytest.mark.parametrize("kind", ["positive", "trig"])
    def test_loop_twin_and_oracle(self, kind):
        rng = np.random.default_rng(0)
        x, w = rng.normal(size=(2, 5, 3)) * 0.5, rng.normal(size=(7, 3))
        for stabilize in (False, True):
            phi = favor_features(x, w, kind=kind, stabilize=stabilize)
            close(phi, favor_features_loop(x, w, kind=kind, stabilize=stabilize), rtol=SELF, what="favor_features vs loop")
        close(favor_features(x, w, kind=kind, stabilize=False), favor_oracle(x, w, kind), rtol=ORACLE, what="favor vs formula")
        # stabilize: one common factor per batch element
        ratio = favor_features(x, w, kind=kind) / favor_oracle(x, w, kind)
        np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1], ratio.shape), rtol=1e-12)

    @pytest.mark.parametrize("kind", ["positive", "trig"])
    @pytest.mark.parametrize("scale", [None, 0.3, 1.0, 0.0])
    def test_scale_is_applied_inside(self, kind, scale):
        # favor_features(x, scale=s) are the features of √s·x (None: s = 1/√d), loop twin alike
        rng = np.random.default_rng(2)
        x, w = rng.normal(size=(2, 6, 4)), rng.normal(size=(5, 4))
        s = 0.5 if scale is None else scale  # 1/√4
        ref = favor_oracle(np.sqrt(s) * x, w, kind)
        for func in (favor_features, favor_features_loop):
            close(func(x, w, scale=scale, kind=kind, stabilize=False), ref, rtol=ORACLE, what=f"{func.__name__} scale={scale}")
        with pytest.raises(ValueError, match="^scale"):
            favor_features(x, w, scale=-1.0)

    @pytest.mark.parametrize("kind", ["positive", "trig"])
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("scale", [None, 0.7])
    def test_performer_uses_favor_features_with_the_same_scale(self, kind, causal, scale):
        # one convention: performer_attention(q, k, v, scale=s, projection=w) is Eq. (12.2) with the
        # features favor_features(q, w, scale=s) and favor_features(k, w, scale=s) of the raw q, k
        rng = np.random.default_rng(3)
        q, k, v = rng.normal(size=(3, 2, 7, 4))
        w = rng.normal(size=(6, 4))
        pq = favor_features(q, w, scale=scale, kind=kind, stabilize=False)
        pk = favor_features(k, w, scale=scale, kind=kind, stabilize=False)
        a = pq @ np.swapaxes(pk, -1, -2)  # Â_ij = φ(q_i)·φ(k_j)
        if causal:
            a = np.tril(a)
        ref = (a @ v) / a.sum(-1, keepdims=True)
        got = performer_attention(q, k, v, n_features=6, projection=w, rng=None, scale=scale, kind=kind, causal=causal)
        close(got, ref, rtol=ORACLE, what="performer_attention vs favor_features(scale) features")

    def test_stabilize_prevents_overflow(self):
        rng = np.random.default_rng(1)
        x, w = rng.normal(size=(4, 3)) * 40, rng.normal(size=(5, 3))
        phi = favor_features(x, w)
        assert np.all(np.isfinite(phi)) and phi.max() == pytest.approx(1 / np.sqrt(5))

    @pytest.mark.parametrize("kind", ["positive", "trig"])
    def test_unbiased_and_lemma2_variance(self, kind):
        # per-direction estimator m·φ_r(x)φ_r(y) (pairs of sin/cos for trig): iid over ω_r ~ N(0, I)
        rng = np.random.default_rng(11)
        x, y = np.array([[0.4, -0.2, 0.3]]), np.array([[0.1, 0.5, -0.3]])
        n = 400_000
        w = rng.standard_normal((n, 3))
        px, py = favor_features(x, w, kind=kind, stabilize=False)[0], favor_features(y, w, kind=kind, stabilize=False)[0]
        per = n * (px * py if kind == "positive" else (px * py).reshape(2, n).sum(0))
        sm = float(np.exp(x @ y.T)[0, 0])
        s, d2 = np.sum((x + y) ** 2), np.sum((x - y) ** 2)
        var = sm**2 * np.exp(s) * (1 - np.exp(-s)) if kind == "positive" else 0.5 * np.exp(s) / sm**2 * (1 - np.exp(-d2)) ** 2
        assert abs(per.mean() - sm) <= mc_band(n) * np.sqrt(var)  # unbiased, Lemma 1
        sq = (per - sm) ** 2  # its mean estimates MSE_1 = m·MSE_m (Lemma 2)
        assert abs(sq.mean() - var) <= mc_band(n) * sq.std()

    @pytest.mark.parametrize("m", [16, 64])
    def test_lemma2_mse_times_m_for_m_features(self, m):
        # the averaged estimator with m iid directions, repeated: MSE·m vs the closed form
        rng = np.random.default_rng(m)
        x, y = np.array([[0.3, 0.2, -0.4, 0.1]]), np.array([[-0.2, 0.3, 0.2, 0.4]])
        reps = 4000
        w = rng.standard_normal((reps, m, 4))
        est = np.array([(favor_features(x, wi, stabilize=False) @ favor_features(y, wi, stabilize=False).T)[0, 0] for wi in w])
        sm = float(np.exp(x @ y.T)[0, 0])
        s = np.sum((x + y) ** 2)
        mse_m = sm**2 * np.exp(s) * (1 - np.exp(-s)) / m
        sq = (est - sm) ** 2
        assert abs(sq.mean() - mse_m) <= mc_band(reps) * sq.std()

    def test_orthogonal_features_lower_mse_than_iid(self):
        # same x, y, m = d = 8; 20 000 independent projections of each kind; paired means differ by > 4 SE
        rng = np.random.default_rng(7)
        d = m = 8
        x, y = rng.normal(size=d) * 0.35, rng.normal(size=d) * 0.35
        sm = float(np.exp(x @ y))
        reps = 20_000

        def err2(w):  # (reps, m, d) projections -> squared errors of the m-feature estimates (Eq. 12.7)
            fx = np.exp(w @ x - x @ x / 2) / np.sqrt(m)
            fy = np.exp(w @ y - y @ y / 2) / np.sqrt(m)
            return (np.sum(fx * fy, axis=-1) - sm) ** 2

        iid = err2(rng.standard_normal((reps, m, d)))
        orf = err2(np.stack([orthogonal_gaussian(m, d, rng=rng) for _ in range(reps)]))
        diff_se = np.sqrt(iid.var() / reps + orf.var() / reps)
        assert iid.mean() - orf.mean() > 4 * diff_se
        s = np.sum((x + y) ** 2)  # the iid MSE is Lemma 2's
        assert abs(iid.mean() - sm**2 * np.exp(s) * (1 - np.exp(-s)) / m) <= mc_band(reps) * iid.std()

    def test_trig_variance_blows_up_for_small_kernel_values(self):
        # ‖x‖ = ‖y‖ = 1.2 at angles 0 … π: exp(x·y) falls from e^{1.44} to e^{-1.44}. The relative MSE
        # of one direction follows Lemma 2 for both kinds: trig grows to e^{5.76}/2 ≈ 158 at θ = π,
        # positive falls to exactly 0 (x + y = 0 there).
        rng = np.random.default_rng(3)
        n = 200_000
        w = rng.standard_normal((n, 2))
        rel = {"positive": [], "trig": []}
        for theta in np.linspace(0.0, np.pi, 5):
            x, y = 1.2 * np.array([[1.0, 0.0]]), 1.2 * np.array([[np.cos(theta), np.sin(theta)]])
            sm = float(np.exp(x @ y.T)[0, 0])
            s, d2 = np.sum((x + y) ** 2), np.sum((x - y) ** 2)
            lemma2 = {"positive": np.exp(s) * (1 - np.exp(-s)), "trig": 0.5 * np.exp(s) / sm**4 * (1 - np.exp(-d2)) ** 2}
            for kind in rel:
                px, py = favor_features(x, w, kind=kind, stabilize=False)[0], favor_features(y, w, kind=kind, stabilize=False)[0]
                per = n * (px * py if kind == "positive" else (px * py).reshape(2, -1).sum(0))
                sq = ((per - sm) / sm) ** 2
                rel[kind].append(sq.mean())  # relative MSE of one direction
                if kind == "trig" or s <= 1.0:  # (the positive estimator is log-normal: for larger
                    # ‖x + y‖ its squared error is too heavy-tailed for a sample-variance band)
                    assert abs(sq.mean() - lemma2[kind]) <= mc_band(n) * sq.std() + 1e-20  # (+1e-20: round-off where both are 0)
        pos, trig = np.array(rel["positive"]), np.array(rel["trig"])
        assert np.all(np.diff(pos) < 0) and pos[-1] < 1e-20
        assert np.all(np.diff(trig) > 0) and trig[-1] > 150

    def test_errors(self):
        x, w = np.ones((3, 2)), np.ones((4, 2))
        with pytest.raises(ValueError, match="^projection: expected shape"):
            favor_features(x, np.ones((4, 3)))
        with pytest.raises(ValueError, match="^kind: expected one of"):
            favor_features(x, w, kind="cos")
        with pytest.raises(ValueError, match="^x: expected finite"):
            favor_features(x * np.nan, w)
        with pytest.raises(ValueError, match="^x: expected shape"):
            favor_features_loop(np.ones(3), w)
        with pytest.raises(TypeError, match="^stabilize: expected a bool"):
            favor_features(x, w, stabilize=1)


class TestOrthogonalGaussian:
    @pytest.mark.parametrize("m,d", [(4, 4), (10, 4), (3, 5)])
    def test_blocks_are_orthogonal_and_reproducible(self, m, d):
        w = orthogonal_gaussian(m, d, rng=5)
        np.testing.assert_array_equal(w, orthogonal_gaussian(m, d, rng=np.random.default_rng(5)))
        assert w.shape == (m, d)
        for start in range(0, m, d):
            blk = w[start : start + d]
            g = blk @ blk.T
            np.testing.assert_allclose(g - np.diag(np.diag(g)), 0.0, atol=1e-12)
        u = orthogonal_gaussian(m, d, rng=5, scaling="sqrt_d")
        np.testing.assert_allclose(np.linalg.norm(u, axis=1), np.sqrt(d), rtol=1e-14)

    def test_rows_are_marginally_standard_normal(self):
        # chi norms: E‖ω‖² = d and each coordinate has variance 1
        w = np.concatenate([orthogonal_gaussian(6, 6, rng=s) for s in range(3000)])
        n = w.shape[0]
        assert abs(np.mean(w[:, 0] ** 2) - 1.0) <= mc_band(n) * np.sqrt(2.0)
        assert abs(np.mean(w[:, 0])) <= mc_band(n)

    def test_errors(self):
        with pytest.raises(ValueError, match="^m: expected an integer >= 1"):
            orthogonal_gaussian(0, 3, rng=0)
        with pytest.raises(TypeError, match="^d: expected an integer"):
            orthogonal_gaussian(2, 2.5, rng=0)
        with pytest.raises(ValueError, match="^scaling: "):
            orthogonal_gaussian(2, 2, rng=0, scaling="one")
        with pytest.raises(TypeError, match="^rng: "):
            orthogonal_gaussian(2, 2, rng="seed")


# ---------------------------------------------------------------------------------------------
class TestPerformerAttention:
    @pytest.mark.parametrize("kind", ["positive", "trig"])
    @pytest.mark.parametrize("causal", [False, True])
    def test_linear_quadratic_loop_and_oracle(self, causal, kind):
        q, k, v = qkv(1, n=10, batch=(2,))
        kw = dict(n_features=12, rng=4, causal=causal, kind=kind)
        y = performer_attention(q, k, v, **kw)
        close(y, performer_attention_quadratic(q, k, v, **kw), rtol=SELF, what="performer linear vs quadratic")
        close(y, performer_attention_loop(q, k, v, **kw), rtol=SELF, what="performer linear vs RNN loop")
        w = orthogonal_gaussian(12, 4, rng=4)  # the same draw as rng=4
        close(y, performer_attention(q, k, v, **{**kw, "rng": None}, projection=w), rtol=0.0, what="projection kw")
        root = 4 ** -0.25
        ref = quadratic_oracle(favor_oracle(q * root, w, kind), favor_oracle(k * root, w, kind), v, causal)
        close(y, ref, rtol=ORACLE, what="performer vs unshifted features (formula)")

    @pytest.mark.parametrize("group", [1, 10**9])
    @pytest.mark.parametrize("m_keys", [64, 200, 333])
    def test_keys_shifted_by_group_then_rescaled(self, monkeypatch, group, m_keys):
        """Non-causal positive features: the keys' features are made group by group of chunks, each group
        shifted by its own max, and the groups' sums brought to the common max after (_ShiftedRowMap). Groups
        of one chunk (group = 1) or all; M a multiple of the chunk or not (a short last part with a shift of
        its own); keys whose norms differ group to group, so that the groups' shifts differ by up to about
        700 (e^{-700}: a group's factor near the bottom of the float64 range). Oracles: the quadratic form
        with the same projection (its own stabilizers) and the unshifted features of the formula, wherever
        those are finite; batch entries sharing the keys and values."""
        monkeypatch.setattr(_blocking, "WORKSPACE_FLOATS", group)
        rng = np.random.default_rng(m_keys)
        d, m = 4, 12
        q = rng.normal(size=(2, 9, d))
        k = rng.normal(size=(m_keys, d))
        k *= np.repeat(rng.uniform(0.2, 3.0, size=-(-m_keys // 64)), 64)[:m_keys, None]  # norms by chunk of 64
        v = rng.normal(size=(m_keys, 3))
        w = orthogonal_gaussian(m, d, rng=1)
        kw = dict(n_features=m, rng=None, projection=w)
        y = performer_attention(q, k, v, **kw)
        close(y, performer_attention_quadratic(q, k, v, **kw), rtol=SELF, what="group-shifted keys vs quadratic")
        root = d ** -0.25
        ref = quadratic_oracle(favor_oracle(q * root, w, "positive"), favor_oracle(k * root, w, "positive"), v, False)
        close(y, ref, rtol=ORACLE, what="group-shifted keys vs unshifted features (formula)")
        # groups far apart: keys of norm ~40 in some chunks, ~0.5 in others (positive features' exponents
        # ω·k̂ − ‖k̂‖²/2 then differ by hundreds); the quadratic form shifts all keys by one max as well
        k2 = k / np.linalg.norm(k, axis=-1, keepdims=True) * np.where(np.arange(m_keys) // 64 % 2, 0.5, 52.0)[:, None]
        y2 = performer_attention(q, k2, v, **kw)
        assert np.all(np.isfinite(y2))
        close(y2, performer_attention_quadratic(q, k2, v, **kw), rtol=SELF, what="group shifts far apart vs quadratic")

    @pytest.mark.parametrize("kind", ["positive", "trig"])
    def test_large_inputs_do_not_underflow_or_overflow(self, kind):
        # ‖q̂‖ = ‖k̂‖ = 60: unshifted positive features are exp(ω·x − 1800) = 0 (0/0 attention), trig
        # ones exp(1800) = inf; the stabilizers of Eq. (12.10) keep every number finite
        q, k, v = qkv(2, n=16, d=4)
        q, k = (120 / np.sqrt(2) * x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))  # √scale = 1/√2
        w = orthogonal_gaussian(8, 4, rng=0)
        with np.errstate(over="ignore"):
            assert not np.any(favor_oracle(q / np.sqrt(2), w, kind)) if kind == "positive" else \
                np.all(np.isinf(favor_oracle(q / np.sqrt(2), w, kind)).any(-1))
        y = performer_attention(q, k, v, n_features=8, rng=0, causal=True, kind=kind)
        assert np.all(np.isfinite(y))
        close(y, performer_attention_quadratic(q, k, v, n_features=8, rng=0, causal=True, kind=kind), rtol=SELF,
              what="performer, large inputs")

    def test_causal_refusal_needs_a_spread_of_key_exponents(self):
        # performer_attention's docstring (chapter 12, §12.4): the one global key shift of Eq. (12.10)
        # underflows the past keys only when the keys' exponents spread by more than ~745. Positive
        # features: all keys of norm 60 (d = 4) are fine; past keys of norm 60 followed by one key of norm
        # 0.01 are refused, the same past keys alone are not. Trig features: one future key of norm 70
        # after unit keys is refused, while positive features take it.
        q, k, v = qkv(3, n=64, d=4)
        unit = k / np.linalg.norm(k, axis=-1, keepdims=True)
        kw = dict(n_features=16, rng=0, causal=True)
        assert np.all(np.isfinite(performer_attention(q, 60 * unit, v, **kw)))
        k_small = 60 * unit
        k_small[40] = 0.01 * unit[40]
        assert np.all(np.isfinite(performer_attention(q[:40], k_small[:40], v[:40], **kw)))
        with pytest.raises(ValueError, match="not representable in float64"):
            performer_attention(q, k_small, v, **kw)
        k_large = unit.copy()
        k_large[40] *= 70
        assert np.all(np.isfinite(performer_attention(q, k_large, v, **kw)))
        assert np.all(np.isfinite(performer_attention(q[:40], k_large[:40], v[:40], **kw, kind="trig")))
        with pytest.raises(ValueError, match="not representable in float64"):
            performer_attention(q, k_large, v, **kw, kind="trig")

    def test_causal_refusal_threshold_in_the_docstring(self):
        # performer_attention's docstring: past keys of norm 55 followed by one key of norm 0.01 (d = 4)
        # are never refused over seeds 0-5 and m = 4 ... 256, of norm 60 always; the onset lies between
        # norm 55.3 and 59.3 (a margin of > 0.25 in norm, i.e. > 5 in the exponent, against round-off).
        for seed in range(6):
            g = np.random.default_rng(seed)
            q, k, v = g.normal(size=(3, 64, 4))
            unit = k / np.linalg.norm(k, axis=-1, keepdims=True)
            for m in (4, 16, 64, 256):
                kw = dict(n_features=m, rng=seed, causal=True)
                k55, k60 = 55 * unit, 60 * unit
                k55[40] = k60[40] = 0.01 * unit[40]
                assert np.all(np.isfinite(performer_attention(q, k55, v, **kw))), (seed, m)
                with pytest.raises(ValueError, match="not representable in float64"):
                    performer_attention(q, k60, v, **kw)

    def test_scale_zero_is_the_mean(self):
        q, k, v = qkv(3)
        y = performer_attention(q, k, v, n_features=4, rng=0, scale=0.0, causal=True)
        close(y, np.cumsum(v, 0) / np.arange(1, 10)[:, None], rtol=ORACLE, what="performer scale 0 = running mean")

    def test_error_decays_like_m_to_the_minus_half(self):
        # RMSE over 40 seeds of the attention output vs softmax attention; slope of log RMSE vs log m.
        # Small ‖q̂ + k̂‖: the positive estimator is log-normal and, for large norms, reaches its
        # m^{-1/2} regime only at much larger m (chapter 12 shows it); here the band is ±0.12.
        q, k, v = qkv(8, n=32, d=4, dv=2)
        q, k = 0.3 * q, 0.3 * k
        exact = softmax_attention(q, k, v)
        ms = np.array([16, 64, 256, 1024])
        rmse = [np.sqrt(np.mean([np.mean((performer_attention(q, k, v, n_features=int(m), rng=s, orthogonal=False) - exact) ** 2)
                                 for s in range(40)])) for m in ms]
        slope = np.polyfit(np.log(ms), np.log(rmse), 1)[0]
        assert -0.62 <= slope <= -0.38

    @settings(max_examples=15)
    @given(st.integers(0, 10**6), st.integers(1, 10), st.integers(0, 9))
    def test_causality(self, seed, n, t):
        t = min(t, n - 1)
        q, k, v = qkv(seed, n=n)
        y = performer_attention(q, k, v, n_features=6, rng=1, causal=True)
        k2, v2 = k.copy(), v.copy()
        k2[t + 1 :] += 0.5
        v2[t + 1 :] -= 1.0
        # keys share one stabilizing shift: a future key may change it, so compare with tolerance
        close(performer_attention(q, k2, v2, n_features=6, rng=1, causal=True)[: t + 1], y[: t + 1], rtol=SELF,
              what="performer causality")


# ---------------------------------------------------------------------------------------------
class TestRFA:
    @pytest.mark.parametrize("causal", [False, True])
    def test_ungated_loop_twin_and_oracle(self, causal):
        q, k, v = qkv(0, n=10, batch=(2,))
        kw = dict(n_features=6, sigma=0.8, rng=2, causal=causal)
        y = rfa_attention(q, k, v, **kw)
        close(y, rfa_attention_loop(q, k, v, **kw), rtol=SELF, what="rfa vs recurrence")
        w = np.random.default_rng(2).standard_normal((6, 4)) / 0.8  # the documented draw
        unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        ref = quadratic_oracle(rff_features(unit(q), w), rff_features(unit(k), w), v, causal)
        close(y, ref, rtol=ORACLE, what="rfa vs quadratic")

    def test_gated_recurrence_equals_decay_masked_quadratic(self):
        q, k, v = qkv(1, n=12, batch=(2,))
        g = np.random.default_rng(9).uniform(0.0, 0.95, size=(2, 12))
        g[0, 4] = 0.0  # a full reset
        kw = dict(n_features=6, sigma=1.0, rng=3, gated=True, gates=g)
        y = rfa_attention(q, k, v, **kw)
        close(y, rfa_attention_loop(q, k, v, **kw), rtol=SELF, what="gated rfa vs recurrence")
        # explicit decay (1 - g_s) Π_{r=s+1}^t g_r from products
        decay = np.zeros((2, 12, 12))
        for b in range(2):
            for t in range(12):
                for s in range(t + 1):
                    decay[b, t, s] = (1 - g[b, s]) * np.prod(g[b, s + 1 : t + 1])
        w = np.random.default_rng(3).standard_normal((6, 4))
        unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        ref = quadratic_oracle(rff_features(unit(q), w), rff_features(unit(k), w), v, True, decay)
        close(y, ref, rtol=ORACLE, what="gated rfa vs explicit products")

    def test_zero_gate_attends_to_current_token(self):
        q, k, v = qkv(2)
        y = rfa_attention(q, k, v, n_features=5, sigma=1.0, rng=0, gated=True, gates=np.zeros(9))
        close(y, v, rtol=ORACLE, what="gate 0 = current token")

    def test_constant_gate_gives_geometric_weights(self):
        # with constant features (D = 1, ω = 0 in effect: sigma huge) the weights are c^{t−s}(1 − c)
        q, k, v = qkv(3, n=8)
        c = 0.7
        y = rfa_attention(q, k, v, n_features=1, sigma=1e12, rng=0, gated=True, gates=np.full(8, c))
        t = np.arange(8)
        wts = np.tril(c ** (t[:, None] - t[None, :]).clip(0)) * (1 - c)
        close(y, (wts @ v) / wts.sum(1, keepdims=True), rtol=1e-9, what="constant gate, geometric weights")

    @pytest.mark.parametrize("spread", [1.0, 30.0, 1e6])
    def test_rff_features_are_sin_and_cos_to_an_ulp(self, spread):
        """The half-angle tangent route gives math.sin/math.cos of the same ω·x within 4 ulp of 1
        (absolute), also next to the poles of tan(ω·x/2), ω·x = (2j + 1)π, and at ω·x = 0."""
        rng = np.random.default_rng(int(spread))
        x, w = rng.normal(size=(40, 3)) * spread, rng.normal(size=(6, 3))
        odd_pi = np.array([[1.0, 0.0, 0.0]]) * (np.pi * np.array([1.0, 3.0, -5.0, 201.0]))[:, None]  # ω_0·x = odd multiples of π
        x = np.concatenate([x, odd_pi, np.nextafter(odd_pi, 0.0), np.zeros((1, 3))])
        w[0] = [1.0, 0.0, 0.0]
        wx = x @ w.T
        phi = rff_features(x, w) * np.sqrt(6)
        sin = np.vectorize(math.sin)(wx)
        cos = np.vectorize(math.cos)(wx)
        assert np.max(np.abs(phi[:, :6] - sin)) <= 4 * 2.0**-52
        assert np.max(np.abs(phi[:, 6:] - cos)) <= 4 * 2.0**-52

    def test_rff_kernel_monte_carlo_pins_sigma(self):
        rng = np.random.default_rng(5)
        x, y, sigma = np.array([[0.6, 0.8]]), np.array([[1.0, 0.0]]), 0.7
        n = 200_000
        w = rng.standard_normal((n, 2)) / sigma
        px, py = rff_features(x, w)[0], rff_features(y, w)[0]
        per = n * (px * py).reshape(2, n).sum(0)  # cos(ω·(x − y))
        z2 = np.sum((x - y) ** 2)
        kern = np.exp(-z2 / (2 * sigma**2))
        sd = np.sqrt(0.5 * (1 - np.exp(-z2 / sigma**2)) ** 2)
        assert abs(per.mean() - kern) <= mc_band(n) * sd

    def test_many_features_approach_softmax_on_unit_vectors(self):
        q, k, v = qkv(4, n=6, d=3)
        sigma = 0.9
        y = rfa_attention(q, k, v, n_features=40_000, sigma=sigma, rng=0, causal=False)
        unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        exact = softmax_attention(unit(q), unit(k), v, scale=1 / sigma**2)
        assert np.max(np.abs(y - exact)) < 0.05

    @settings(max_examples=15)
    @given(st.integers(0, 10**6), st.integers(1, 10), st.integers(0, 9))
    def test_causality(self, seed, n, t):
        t = min(t, n - 1)
        q, k, v = qkv(seed, n=n)
        g = np.random.default_rng(seed).uniform(0, 0.9, n)
        y = rfa_attention(q, k, v, n_features=4, sigma=1.0, rng=1, gated=True, gates=g)
        k2, g2 = k.copy(), g.copy()
        k2[t + 1 :] += 1.0
        g2[t + 1 :] = 0.3
        np.testing.assert_array_equal(rfa_attention(q, k2, v, n_features=4, sigma=1.0, rng=1, gated=True, gates=g2)[: t + 1],
                                      y[: t + 1])


# ---------------------------------------------------------------------------------------------
def full_shared_qk(qk, v, causal):
    """Full shared-QK attention with the self-mask (a token sees itself only when alone)."""
    n = qk.shape[-2]
    keys = qk / np.linalg.norm(qk, axis=-1, keepdims=True)
    allowed = ~np.eye(n, dtype=bool)
    if causal:
        allowed[0, 0] = True  # the first token has nothing else
    return softmax_attention(qk, keys, v, mask=allowed, causal=causal)


class TestLSH:
    def test_hash_reproducible_and_matches_formula(self):
        x = np.random.default_rng(0).normal(size=(2, 10, 5))
        h = lsh_hash(x, 6, rng=3, n_rounds=2)
        np.testing.assert_array_equal(h, lsh_hash(x, 6, rng=np.random.default_rng(3), n_rounds=2))
        rot = np.random.default_rng(3).standard_normal((2, 5, 3))
        np.testing.assert_array_equal(h, lsh_hash(x, 6, rng=None, n_rounds=2, rotations=rot))
        for r in range(2):
            xr = x @ rot[r]
            np.testing.assert_array_equal(h[:, r], np.argmax(np.concatenate([xr, -xr], -1), -1))
        assert h.shape == (2, 2, 10) and h.min() >= 0 and h.max() < 6
        np.testing.assert_array_equal(lsh_hash(3.0 * x, 6, rng=3, n_rounds=2), h)  # depends on direction only

    def test_collision_probability_two_buckets(self):
        # b = 2: a random hyperplane, P(same bucket) = 1 − θ/π; binomial band
        rng = np.random.default_rng(2)
        trials = 20_000
        for theta in np.linspace(0.2, 3.0, 5):
            x = np.array([[1.0, 0.0, 0.0], [np.cos(theta), np.sin(theta), 0.0]])
            h = lsh_hash(x, 2, rng=rng, n_rounds=trials)[:, :]
            p_hat = np.mean(h[:, 0] == h[:, 1])
            p = 1 - theta / np.pi
            assert abs(p_hat - p) <= mc_band(trials) * np.sqrt(p * (1 - p))

    def test_collision_probability_decreases_with_angle_and_buckets(self):
        rng = np.random.default_rng(4)
        probs = {}
        for b in (4, 8):
            for theta in (0.3, 1.2, 2.4):
                x = np.array([[1.0, 0.0, 0.0, 0.0], [np.cos(theta), np.sin(theta), 0.0, 0.0]])
                h = lsh_hash(x, b, rng=rng, n_rounds=10_000)
                probs[b, theta] = np.mean(h[:, 0] == h[:, 1])
        for b in (4, 8):
            assert probs[b, 0.3] > probs[b, 1.2] > probs[b, 2.4]
        for theta in (0.3, 1.2):
            assert probs[8, theta] < probs[4, theta]

    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("n_buckets", [2, 4])
    def test_one_round_two_chunks_is_full_shared_qk_attention(self, causal, n_buckets):
        rng = np.random.default_rng(6)
        qk, v = rng.normal(size=(2, 16, 4)), rng.normal(size=(2, 16, 3))
        y = lsh_attention(qk, v, n_buckets=n_buckets, n_rounds=1, chunk_size=8, rng=1, causal=causal)
        close(y, full_shared_qk(qk, v, causal), rtol=ORACLE, what="LSH 1 round, 2 chunks vs full shared-QK")

    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("n_buckets,n_rounds,chunk", [(2, 1, 16), (4, 1, 4), (8, 3, 4), (6, 2, 2)])
    def test_loop_twin(self, n_buckets, n_rounds, chunk, causal):
        rng = np.random.default_rng(n_buckets + chunk)
        qk, v = rng.normal(size=(2, 16, 4)), rng.normal(size=(16, 3))
        kw = dict(n_buckets=n_buckets, n_rounds=n_rounds, chunk_size=chunk, rng=5, causal=causal)
        close(lsh_attention(qk, v, **kw), lsh_attention_loop(qk, v, **kw), rtol=SELF, what="lsh_attention vs loop")

    @pytest.mark.parametrize("causal", [False, True])
    def test_groups_of_chunks(self, monkeypatch, causal):
        # one chunk per group (the smallest groups) gives the same result as one group
        rng = np.random.default_rng(12)
        qk, v = rng.normal(size=(2, 3, 32, 4))
        kw = dict(n_buckets=4, n_rounds=3, chunk_size=4, rng=2, causal=causal)
        whole = lsh_attention(qk, v, **kw)
        monkeypatch.setattr(_blocking, "WORKSPACE_FLOATS", 1)
        close(lsh_attention(qk, v, **kw), whole, rtol=SELF, what="lsh groups of one chunk vs one group")
        close(whole, lsh_attention_loop(qk, v, **kw), rtol=SELF, what="lsh_attention vs loop")

    def test_first_causal_token_attends_to_itself(self):
        rng = np.random.default_rng(7)
        qk, v = rng.normal(size=(8, 4)), rng.normal(size=(8, 3))
        y = lsh_attention(qk, v, n_buckets=4, n_rounds=3, chunk_size=2, rng=0, causal=True)
        close(y[0], v[0], rtol=ORACLE, what="first causal token")
        assert SELF_ATTENTION_VALUE == -5e4

    # ---- the look-back rule for more than one round -------------------------------------------

    @staticmethod
    def reformer_reference(qk, v, rot, n_buckets, chunk, causal, across_rounds):
        """A transcription of reformer-pytorch's ``LSHAttention.forward`` for one sequence (N, d).

        The steps of that code, in NumPy: bucket ids offset by round (``+ r·n_buckets``), one
        stable sort of all rounds' ``bucket·N + position`` (the "ticker"), chunks over the whole
        sorted sequence, ``look_one_back`` by concatenating each chunk with the *rolled* chunk
        axis — over all rounds' chunks (``across_rounds``), or rolled inside each round (the
        other rule) — masks by original position, logsumexp, unsort, and a softmax over rounds.
        """
        n, d = qk.shape
        R = rot.shape[0]
        xr = np.einsum("nd,rdb->rnb", qk, rot)
        buckets = np.argmax(np.concatenate([xr, -xr], axis=-1), axis=-1)  # (R, N)
        buckets = buckets + n_buckets * np.arange(R)[:, None]  # per-round offsets
        ticker = np.arange(R * n)
        sticker = np.argsort(buckets.reshape(-1) * n + ticker % n, kind="stable")
        st = sticker % n  # original positions in sorted order
        bq = qk[st].reshape(R * n // chunk, chunk, d)
        bk = (qk / np.linalg.norm(qk, axis=-1, keepdims=True))[st].reshape(R * n // chunk, chunk, d)
        bv = v[st].reshape(R * n // chunk, chunk, -1)
        bt = st.reshape(R * n // chunk, chunk)

        def look_one_back(x):
            if across_rounds:
                rolled = np.roll(x, 1, axis=0)
            else:
                per = x.reshape(R, n // chunk, *x.shape[1:])
                rolled = np.roll(per, 1, axis=1).reshape(x.shape)
            return np.concatenate([x, rolled], axis=1)

        kk, vv, kt = look_one_back(bk), look_one_back(bv), look_one_back(bt[..., None])[..., 0]
        dots = np.einsum("gie,gje->gij", bq, kk) / math.sqrt(d)
        if causal:
            dots = np.where(bt[:, :, None] < kt[:, None, :], -np.inf, dots)
        dots = np.where(bt[:, :, None] == kt[:, None, :], SELF_ATTENTION_VALUE, dots)
        lse = np.log(np.sum(np.exp(dots - dots.max(-1, keepdims=True)), -1)) + dots.max(-1)
        so = np.einsum("gij,gjf->gif", np.exp(dots - lse[..., None]), vv).reshape(R * n, -1)
        slogits = lse.reshape(R * n)
        undo = np.argsort(sticker)
        o, logits = so[undo].reshape(R, n, -1), slogits[undo].reshape(R, n)
        probs = np.exp(logits - logits.max(0)) / np.sum(np.exp(logits - logits.max(0)), 0)
        return np.einsum("rn,rnf->nf", probs, o)

    @pytest.mark.parametrize("look_back", ["within_round", "across_rounds"])
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("n_buckets,n_rounds,chunk", [(4, 2, 4), (8, 3, 2), (2, 4, 16), (6, 2, 8), (4, 3, 32)])
    def test_look_back_rules_vs_reformer_transcription(self, look_back, causal, n_buckets, n_rounds, chunk):
        rng = np.random.default_rng(31 + n_rounds)
        qk, v = rng.normal(size=(2, 32, 5)), rng.normal(size=(2, 32, 3))
        rot = rng.normal(size=(n_rounds, 5, n_buckets // 2))
        kw = dict(n_buckets=n_buckets, n_rounds=n_rounds, chunk_size=chunk, rotations=rot, causal=causal, look_back=look_back)
        y, y_loop = lsh_attention(qk, v, **kw), lsh_attention_loop(qk, v, **kw)
        ref = np.stack([self.reformer_reference(qk[b], v[b], rot, n_buckets, chunk, causal, look_back == "across_rounds")
                        for b in range(2)])
        # With one chunk per round the transcription's within-round roll duplicates the chunk: the
        # same softmax, but its log-normalizer −5e4 + log 2 (a query that sees only itself) is
        # rounded to an ulp of 5e4 (7e-12), which the softmax over rounds passes on.
        tol = ORACLE if chunk < 32 else 2e-11
        close(y, ref, rtol=tol, what=f"lsh_attention look_back={look_back} vs reformer transcription")
        close(y_loop, y, rtol=SELF, what=f"lsh_attention_loop look_back={look_back}")

    def test_look_back_rules_differ_for_several_rounds_only(self):
        rng = np.random.default_rng(40)
        qk, v = rng.normal(size=(32, 4)), rng.normal(size=(32, 2))
        kw = dict(n_buckets=4, chunk_size=4, rng=1)
        one = [lsh_attention(qk, v, n_rounds=1, look_back=lb, **kw) for lb in ("within_round", "across_rounds")]
        np.testing.assert_array_equal(one[0], one[1])
        two = [lsh_attention(qk, v, n_rounds=2, look_back=lb, **kw) for lb in ("within_round", "across_rounds")]
        assert np.max(np.abs(two[0] - two[1])) > 1e-3 * np.max(np.abs(two[0]))
        # the default is the within-round rule
        np.testing.assert_array_equal(lsh_attention(qk, v, n_rounds=2, **kw), two[0])

    def test_across_rounds_first_chunk_sees_previous_round(self):
        # With one-hot values y_i is query i's attention row, so its support is the union of the
        # keys of i's windows in both rounds (minus i itself: its weight e^{−5e4} is exactly 0).
        # Round 1's first chunk looks back to round 0's last chunk (across_rounds) or round 1's
        # last chunk (within_round); round 0's first chunk to round 1's last or round 0's last.
        rng = np.random.default_rng(41)
        n, c = 16, 4
        qk, v = rng.normal(size=(n, 3)), np.eye(n)
        rot = rng.normal(size=(2, 3, 2))
        perm = np.argsort(lsh_hash(qk, 4, rng=None, n_rounds=2, rotations=rot) * n + np.arange(n), axis=-1, kind="stable")
        chunks = perm.reshape(2 * n // c, c)  # round 0's chunks, then round 1's
        kw = dict(n_buckets=4, n_rounds=2, chunk_size=c, rotations=rot)
        for look_back in ("across_rounds", "within_round"):
            y = lsh_attention(qk, v, look_back=look_back, **kw)
            for i in range(n):
                support = set()
                for r in range(2):
                    g = r * (n // c) + int(np.flatnonzero(perm[r] == i)[0]) // c  # i's chunk in round r
                    if look_back == "across_rounds":
                        back = (g - 1) % (2 * n // c)
                    else:
                        back = r * (n // c) + (g - r * (n // c) - 1) % (n // c)
                    support |= set(chunks[g]) | set(chunks[back])
                assert set(np.flatnonzero(y[i])) == support - {i}, (look_back, i)

    def test_rotations_instead_of_rng(self):
        rng = np.random.default_rng(42)
        qk, v = rng.normal(size=(2, 16, 4)), rng.normal(size=(2, 16, 3))
        rot = np.random.default_rng(9).standard_normal((3, 4, 3))  # what rng=9 draws
        for func in (lsh_attention, lsh_attention_loop):
            kw = dict(n_buckets=6, n_rounds=3, chunk_size=4)
            np.testing.assert_array_equal(func(qk, v, rotations=rot, **kw), func(qk, v, rng=9, **kw))
            with pytest.raises(ValueError, match="^rng: expected None when rotations"):
                func(qk, v, rotations=rot, rng=9, **kw)
            with pytest.raises(ValueError, match="^rotations: expected shape \\(3, 4, 3\\)"):
                func(qk, v, rotations=rot[:, :, :2], **kw)
            with pytest.raises(ValueError, match="^look_back"):
                func(qk, v, rotations=rot, look_back="sorted", **kw)

    def test_many_rounds_reduce_error(self):
        # more rounds see more of the keys that matter: the error vs full attention falls
        rng = np.random.default_rng(8)
        qk, v = 2.0 * rng.normal(size=(64, 8)), rng.normal(size=(64, 2))
        exact = full_shared_qk(qk, v, False)
        err = [np.mean([np.sqrt(np.mean((lsh_attention(qk, v, n_buckets=8, n_rounds=r, chunk_size=8, rng=s) - exact) ** 2))
                        for s in range(10)]) for r in (1, 4)]
        assert err[1] < 0.8 * err[0]


# ---------------------------------------------------------------------------------------------
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("n_buckets, n_rounds, chunk", [(8, 4, 8), (4, 2, 16), (16, 3, 4)])
    def test_lsh_attention_vs_independent_implementation(self, causal, n_buckets, n_rounds, chunk):
        # Eqs. (12.13)-(12.15) written out token by token from lsh_hash's bucket ids: per round, sort by
        # (bucket, position), chunks of c, window = own chunk + the previous one (cyclic, within the round),
        # s_ii = SELF_ATTENTION_VALUE, s_ij = -inf for j > i if causal; rounds combined by their log-normalizers
        from scipy.special import logsumexp

        rng = np.random.default_rng(1212)
        qk, v = rng.normal(size=(2, 64, 8))
        n, d = qk.shape
        keys = qk / np.linalg.norm(qk, axis=-1, keepdims=True)
        outs, lz = [], []
        for b_r in lsh_hash(qk, n_buckets, rng=5, n_rounds=n_rounds):
            chunks = np.argsort(b_r * n + np.arange(n), kind="stable").reshape(-1, chunk)
            o, z = np.zeros((n, v.shape[1])), np.zeros(n)
            for ci in range(len(chunks)):
                win = np.concatenate([chunks[ci], chunks[ci - 1]])
                for i in chunks[ci]:
                    s = np.where(win == i, rf_module.SELF_ATTENTION_VALUE, qk[i] @ keys[win].T / np.sqrt(d))
                    if causal:
                        s = np.where(win > i, -np.inf, s)
                    z[i] = logsumexp(s)
                    o[i] = np.exp(s - z[i]) @ v[win]
            outs.append(o)
            lz.append(z)
        lz = np.array(lz)
        ref = np.einsum("rn,rnv->nv", np.exp(lz - logsumexp(lz, axis=0)), np.array(outs))
        y = lsh_attention(qk, v, n_buckets=n_buckets, n_rounds=n_rounds, chunk_size=chunk, rng=5, causal=causal)
        # 1e-9: a token alone in its window has log-normalizer -5e4 in every round; the reference's
        # logsumexp over rounds then rounds at ulp(5e4) ~ 7e-12
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-9)


class TestReversible:
    def test_inverse_reconstructs(self):
        rng = np.random.default_rng(0)
        x1, x2 = rng.normal(size=(2, 3, 16, 4))
        w1, w2 = rng.normal(size=(2, 4, 4))
        f = [lambda x, w=w: np.tanh(x @ w) for w in (w1, w2)]
        g = [lambda x, w=w: np.sin(x @ w.T) for w in (w1, w2)]
        y1, y2 = reversible_forward(x1, x2, f, g)
        a, b = reversible_inverse(y1, y2, f, g)
        close(a, x1, rtol=ORACLE, what="reversible inverse x1")
        close(b, x2, rtol=ORACLE, what="reversible inverse x2")
        # one block written out
        z1 = x1 + f[0](x2)
        np.testing.assert_array_equal(reversible_forward(x1, x2, f[0], g[0]), (z1, x2 + g[0](z1)))

    def test_errors(self):
        x = np.ones((2, 3))
        with pytest.raises(ValueError, match="^x2: expected the same shape"):
            reversible_forward(x, np.ones((3, 2)), np.sin, np.sin)
        with pytest.raises(ValueError, match="^f: expected an output of shape"):
            reversible_forward(x, x, lambda z: z[0], np.sin)
        with pytest.raises(ValueError, match="^g: expected as many"):
            reversible_inverse(x, x, [np.sin, np.cos], [np.sin])
        with pytest.raises(TypeError, match="^g: expected a callable"):
            reversible_forward(x, x, np.sin, 3)
        with pytest.raises(ValueError, match="^y1: expected finite"):
            reversible_inverse(x * np.inf, x, np.sin, np.sin)


# ---------------------------------------------------------------------------------------------
Q, K, V = np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 2))
ATTENTION_FUNCS = [
    (linear_attention, {}),
    (linear_attention_loop, {}),
    (performer_attention, {"n_features": 4, "rng": 0}),
    (performer_attention_loop, {"n_features": 4, "rng": 0}),
    (performer_attention_quadratic, {"n_features": 4, "rng": 0}),
    (rfa_attention, {"n_features": 4, "sigma": 1.0, "rng": 0}),
    (rfa_attention_loop, {"n_features": 4, "sigma": 1.0, "rng": 0}),
]


class TestErrors:
    @pytest.mark.parametrize(
        "args,kwargs,exc,match",
        [
            ((Q * np.nan, K, V), {}, ValueError, "^q: expected finite"),
            ((Q, K * np.inf, V), {}, ValueError, "^k: expected finite"),
            ((Q, K, V * np.nan), {}, ValueError, "^v: expected finite"),
            ((np.ones(3), K, V), {}, ValueError, "^q: expected shape"),
            ((Q, np.ones((4, 2)), V), {}, ValueError, "^k: expected the same last dimension"),
            ((Q, K, np.ones((3, 2))), {}, ValueError, "^v: expected the same number of rows"),
            ((Q, np.ones((5, 3)), np.ones((5, 2))), {"causal": True}, ValueError, "^k: causal attention needs"),
            ((np.ones((2, 4, 3)), np.ones((3, 4, 3)), V), {}, ValueError, "^k: the batch axes"),
            ((Q, K, V), {"causal": "yes"}, TypeError, "^causal: expected a bool"),
            ((Q * 1j, K, V), {}, TypeError, "^q: expected real"),
        ],
    )
    @pytest.mark.parametrize("func,base", ATTENTION_FUNCS, ids=lambda x: getattr(x, "__name__", ""))
    def test_shared_errors(self, func, base, args, kwargs, exc, match):
        with pytest.raises(exc, match=match):
            func(*args, **{**base, **kwargs})

    @pytest.mark.parametrize("threads", [1, 2, 3])
    @pytest.mark.parametrize("causal", [False, True])
    def test_linear_attention_checks_the_rows_each_thread_reads(self, monkeypatch, causal, threads):
        # linear attention leaves the finiteness of q, k, v to the kernel's threads, each checking the rows
        # it reads (chunk groups, output groups, the short last chunk): one bad entry in any row, of any
        # argument, is refused with the up-front check's error; with two, the first argument in order is
        # named whichever thread meets its bad entry first; finite inputs whose output overflows are
        # still refused (the threads vouch for the output only where its sums are finite)
        monkeypatch.setattr(_blocking, "THREADS", threads)
        monkeypatch.setattr(_blocking, "THREAD_MIN_ELEMS", 0)
        monkeypatch.setattr(_blocking, "WORKSPACE_FLOATS", 2**12)  # many chunk groups
        rng = np.random.default_rng(31)
        n, m = 301, 301 if causal else 203  # no multiple of the chunk: a short last chunk
        args = dict(q=rng.normal(size=(2, n, 8)), k=rng.normal(size=(2, m, 8)), v=rng.normal(size=(2, m, 5)))
        y = linear_attention(**args, causal=causal)
        np.testing.assert_allclose(y, linear_attention_loop(**args, causal=causal), rtol=1e-12, atol=1e-14)
        for name in args:
            for row in (0, 150, args[name].shape[1] - 1):
                broken = dict(args, **{name: args[name].copy()})
                broken[name][1, row, 2] = np.nan
                with pytest.raises(ValueError, match=f"^{name}: expected finite values, got 1 NaN/inf entries"):
                    linear_attention(**broken, causal=causal)
        for first, later in (("q", "k"), ("q", "v"), ("k", "v")):
            broken = {name: arr.copy() for name, arr in args.items()}
            broken[first][1, -1, 0] = np.inf  # read last
            broken[later][0, 0, 0] = -np.inf  # read first
            with pytest.raises(ValueError, match=f"^{first}: expected finite values, got 1 NaN/inf entries"):
                linear_attention(**broken, causal=causal)
        huge = dict(args, v=np.full((2, m, 5), 1.7e308))  # finite values whose weighted sums overflow
        with pytest.raises(ValueError, match="not representable in float64"):
            linear_attention(**huge, causal=causal)

    @pytest.mark.parametrize("func", [performer_attention, performer_attention_loop, performer_attention_quadratic])
    def test_performer_errors(self, func):
        with pytest.raises(ValueError, match="^n_features: expected an integer >= 1"):
            func(Q, K, V, n_features=0, rng=0)
        with pytest.raises(TypeError, match="^n_features: expected an integer"):
            func(Q, K, V, n_features=2.0, rng=0)
        with pytest.raises(ValueError, match="^kind: expected one of"):
            func(Q, K, V, n_features=2, rng=0, kind="hyperbolic")
        with pytest.raises(ValueError, match="^scale: expected a finite value >= 0"):
            func(Q, K, V, n_features=2, rng=0, scale=-1.0)
        with pytest.raises(ValueError, match="^projection: expected shape \\(2, 3\\)"):
            func(Q, K, V, n_features=2, rng=0, projection=np.ones((3, 3)))
        with pytest.raises(TypeError, match="^rng: "):
            func(Q, K, V, n_features=2, rng="seed")
        with pytest.raises(TypeError, match="^orthogonal: expected a bool"):
            func(Q, K, V, n_features=2, rng=0, orthogonal=None)

    @pytest.mark.parametrize("func", [linear_attention, linear_attention_loop])
    def test_linear_errors(self, func):
        with pytest.raises(ValueError, match="^feature_map: expected one of"):
            func(Q, K, V, feature_map="relu")
        with pytest.raises(TypeError, match="^feature_map: expected 'elu\\+1' or a callable"):
            func(Q, K, V, feature_map=3)
        with pytest.raises(ValueError, match="^feature_map: expected φ\\(q\\)"):
            func(Q, K, V, feature_map=lambda x: x[..., 0])

    @pytest.mark.parametrize("func", [rfa_attention, rfa_attention_loop])
    def test_rfa_errors(self, func):
        kw = dict(n_features=3, sigma=1.0, rng=0)
        with pytest.raises(ValueError, match="^n_features: expected an integer >= 1"):
            func(Q, K, V, **{**kw, "n_features": 0})
        with pytest.raises(ValueError, match="^sigma: expected a finite value > 0"):
            func(Q, K, V, **{**kw, "sigma": 0.0})
        with pytest.raises(ValueError, match="^causal: gated RFA"):
            func(Q, K, V, **kw, gated=True, gates=np.full(4, 0.5), causal=False)
        with pytest.raises(ValueError, match="^gates: gated=True needs"):
            func(Q, K, V, **kw, gated=True)
        with pytest.raises(ValueError, match="^gates: given but gated=False"):
            func(Q, K, V, **kw, gates=np.full(4, 0.5))
        with pytest.raises(ValueError, match="^gates: expected values in \\[0, 1\\)"):
            func(Q, K, V, **kw, gated=True, gates=np.full(4, 1.0))
        with pytest.raises(ValueError, match="^gates: expected a shape broadcastable"):
            func(Q, K, V, **kw, gated=True, gates=np.full(5, 0.5))
        with pytest.raises(ValueError, match="^gates: expected finite"):
            func(Q, K, V, **kw, gated=True, gates=np.full(4, np.nan))
        with pytest.raises(ValueError, match="^q: expected nonzero rows"):
            func(np.zeros((4, 3)), K, V, **kw)
        with pytest.raises(TypeError, match="^gated: expected a bool"):
            func(Q, K, V, **kw, gated=None)

    @pytest.mark.parametrize("size", [1e-200, 1e200, 1e300])
    def test_unit_rows_of_extreme_size(self, size):
        """RFA and LSH divide rows by their norms; rows whose squares underflow or overflow float64 have norms all
        the same (np.linalg.norm gave 0 or inf: a false 'zero row' refusal, or features of a zero row). RFA is
        invariant to the rows' scale; both agree with their loop twins."""
        rng = np.random.default_rng(9)
        q, k, v = rng.normal(size=(3, 8, 4))
        kw = dict(n_features=16, sigma=1.0, rng=1)
        want = rfa_attention(q, k, v, **kw)
        close(rfa_attention(q * size, k * size, v, **kw), want, rtol=1e-14, what=f"RFA, rows scaled by {size:.0e}")
        close(rfa_attention_loop(q * size, k * size, v, **kw), want, rtol=1e-14, what="its loop twin")
        qk, w = rng.normal(size=(2, 16, 4))
        lw = dict(n_buckets=4, n_rounds=2, chunk_size=4, rng=0)
        if size < 1:  # (LSH's logits scale with qk: huge rows overflow them, refused elsewhere)
            close(lsh_attention(qk * size, w, **lw), lsh_attention_loop(qk * size, w, **lw), rtol=SELF,
                  what=f"LSH attention, rows of size {size:.0e}, vs its loop twin")
        x = rng.normal(size=(50, 7)) * np.exp(rng.uniform(-40, 40, (50, 1)))
        assert np.array_equal(row_norms(x), np.linalg.norm(x, axis=-1, keepdims=True))  # ordinary rows: same bits

    @pytest.mark.parametrize("func", [lsh_attention, lsh_attention_loop])
    def test_lsh_attention_errors(self, func):
        qk, v = np.random.default_rng(0).normal(size=(2, 8, 3))
        kw = dict(n_buckets=4, n_rounds=1, chunk_size=4, rng=0)
        with pytest.raises(ValueError, match="^n_buckets: expected an even number"):
            func(qk, v, **{**kw, "n_buckets": 3})
        with pytest.raises(ValueError, match="^n_buckets: expected an integer >= 2"):
            func(qk, v, **{**kw, "n_buckets": 0})
        with pytest.raises(ValueError, match="^n_rounds: expected an integer >= 1"):
            func(qk, v, **{**kw, "n_rounds": 0})
        with pytest.raises(ValueError, match="^chunk_size: expected a divisor of N = 8"):
            func(qk, v, **{**kw, "chunk_size": 3})
        with pytest.raises(ValueError, match="^chunk_size: expected an integer >= 1"):
            func(qk, v, **{**kw, "chunk_size": 0})
        with pytest.raises(ValueError, match="^v: expected the same number of rows"):
            func(qk, v[:4], **kw)
        with pytest.raises(ValueError, match="^v: the batch axes"):
            func(np.ones((2, 8, 3)), np.ones((3, 8, 3)), **kw)
        with pytest.raises(ValueError, match="^qk: expected finite"):
            func(qk * np.nan, v, **kw)
        with pytest.raises(ValueError, match="^qk: expected nonzero rows"):
            func(np.zeros((8, 3)), v, **kw)
        with pytest.raises(TypeError, match="^causal: expected a bool"):
            func(qk, v, **kw, causal=1)

    def test_lsh_hash_errors(self):
        x = np.ones((4, 3))
        with pytest.raises(ValueError, match="^n_buckets: expected an even number"):
            lsh_hash(x, 5, rng=0)
        with pytest.raises(ValueError, match="^n_rounds: expected an integer >= 1"):
            lsh_hash(x, 4, rng=0, n_rounds=0)
        with pytest.raises(ValueError, match="^rotations: expected shape \\(1, 3, 2\\)"):
            lsh_hash(x, 4, rng=0, rotations=np.ones((1, 3, 3)))
        with pytest.raises(ValueError, match="^x: expected finite"):
            lsh_hash(x * np.nan, 4, rng=0)

    def test_rff_errors(self):
        with pytest.raises(ValueError, match="^projection: expected shape"):
            rff_features(np.ones((3, 2)), np.ones((4, 3)))


class TestUnusedRngRefused:
    """An ``rng`` that would be ignored (the draw is given) is an error, not silently dropped."""

    def test_performer_with_projection(self):
        rng = np.random.default_rng(0)
        q, k, v, w = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), rng.normal(size=(6, 2)), rng.normal(size=(8, 3))
        for f in (performer_attention, performer_attention_loop, performer_attention_quadratic):
            y = f(q, k, v, n_features=8, rng=None, projection=w)
            assert np.all(np.isfinite(y))
            for bad in (0, 0.5, "seed", -1, np.random.default_rng(1)):
                with pytest.raises(ValueError, match="^rng: expected None when projection is given"):
                    f(q, k, v, n_features=8, rng=bad, projection=w)

    def test_lsh_hash_with_rotations(self):
        rng = np.random.default_rng(1)
        x, rot = rng.normal(size=(8, 3)), rng.normal(size=(2, 3, 2))
        assert lsh_hash(x, 4, rng=None, n_rounds=2, rotations=rot).shape == (2, 8)
        with pytest.raises(ValueError, match="^rng: expected None when rotations is given"):
            lsh_hash(x, 4, rng=7, n_rounds=2, rotations=rot)

    def test_negative_seed_names_rng(self):
        rng = np.random.default_rng(2)
        x = rng.normal(size=(8, 3))
        with pytest.raises(ValueError, match="^rng: expected a seed >= 0"):
            lsh_hash(x, 4, rng=-1)
        with pytest.raises(ValueError, match="^rng: expected a seed >= 0"):
            orthogonal_gaussian(4, 3, rng=-1)


@pytest.mark.parametrize("causal", [False, True])
def test_inputs_are_never_written(causal):
    """The kernel attentions read q, k, v without copying them: read-only inputs must work."""
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(3, 2, 130, 8))
    gates = rng.uniform(0.5, 1.0, (2, 130))
    for a in (q, k, v, gates):
        a.flags.writeable = False
    kept = [a.copy() for a in (q, k, v)]
    rf_module.linear_attention(q, k, v, causal=causal)
    rf_module.performer_attention(q, k, v, n_features=16, rng=1, causal=causal)
    rf_module.rfa_attention(q, k, v, n_features=8, sigma=1.0, rng=1, causal=causal)
    if causal:
        rf_module.rfa_attention(q, k, v, n_features=8, sigma=1.0, rng=1, gated=True, gates=gates)
    for a, b in zip((q, k, v), kept):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
class TestThreads:
    """The kernel attentions share groups of chunks and row blocks of the feature maps out between
    threads (refimpl._blocking.in_parts). The groups are fixed by the sizes, never by the thread
    count, so the output must be bitwise the same with one, two or three threads."""

    N, D, M = 2900, 64, 256  # N not a multiple of the chunk (64); every stage in several parts (45 chunks, 21 per group)

    @staticmethod
    def spy(monkeypatch):
        """Record, per in_parts call, how many parts (one per thread) it ran, and its ``elems``."""
        calls = []
        real = _blocking.in_parts

        def in_parts(run, n, elems):
            parts = []

            def wrapped(part):
                parts.append(part)
                run(part)

            real(wrapped, n, elems)
            calls.append((len(parts), elems))

        monkeypatch.setattr(_blocking, "in_parts", in_parts)  # what take_turns calls
        if hasattr(rf_module, "in_parts"):
            monkeypatch.setattr(rf_module, "in_parts", in_parts)
        return calls

    def cases(self):
        rng = np.random.default_rng(42)
        q, k, v = rng.normal(size=(3, self.N, self.D)) / 2
        w = orthogonal_gaussian(self.M, self.D, rng=1)
        kq, kk, kv = rng.normal(size=(3, 2, 1500, self.D)) / 2  # a batch, M != N (non-causal)
        for causal in (False, True):
            yield "linear", causal, lambda: linear_attention(q, k, v, causal=causal)
            for kind in KINDS:
                kw = dict(n_features=self.M, rng=None, projection=w, causal=causal, kind=kind)
                yield f"performer {kind}", causal, lambda kw=kw: performer_attention(q, k, v, **kw)
            yield "rfa", causal, lambda: rfa_attention(q, k, v, n_features=self.M // 2, sigma=1.0, rng=3, causal=causal)
        yield "linear batch M != N", False, lambda: linear_attention(kq[0], kk, kv)
        yield "performer batch M != N", False, lambda: performer_attention(kq, kk[0], kv, n_features=self.M, rng=2)

    @pytest.mark.parametrize("threads", [2, 3])
    def test_bitwise_the_same_for_any_thread_count(self, monkeypatch, threads):
        calls = self.spy(monkeypatch)
        for name, causal, fn in self.cases():
            monkeypatch.setattr(_blocking, "THREADS", 1)
            one = fn()
            monkeypatch.setattr(_blocking, "THREADS", threads)
            del calls[:]
            many = fn()
            assert np.array_equal(one, many), (name, causal, threads)
            # the threaded path was taken: every stage was cut into parts for more than one thread
            assert calls and all(parts > 1 and elems >= _blocking.THREAD_MIN_ELEMS for parts, elems in calls), (name, calls)

    @pytest.mark.parametrize("one_thread", [40, 2**19])
    def test_small_groups_in_threads(self, monkeypatch, one_thread):
        """Groups of one chunk and products cut into pieces of one or two rows, in three threads:
        the same bits as one thread, and the quadratic oracle."""
        monkeypatch.setattr(_blocking, "WORKSPACE_FLOATS", 1)
        monkeypatch.setattr(rf_module, "_ONE_THREAD", one_thread)
        monkeypatch.setattr(_blocking, "THREAD_MIN_ELEMS", 1)
        q, k, v = qkv(8, n=200, d=5, dv=3, batch=(2,))
        for causal in (False, True):
            monkeypatch.setattr(_blocking, "THREADS", 1)
            one = linear_attention(q, k, v, causal=causal)
            monkeypatch.setattr(_blocking, "THREADS", 3)
            many = linear_attention(q, k, v, causal=causal)
            assert np.array_equal(one, many), causal
            close(many, quadratic_oracle(elu1(q), elu1(k), v, causal), rtol=ORACLE, what="threaded groups of one chunk vs dense")

    def test_shared_runs_every_item_once(self, monkeypatch):
        monkeypatch.setattr(_blocking, "THREADS", 3)
        done = []
        lock = threading.Lock()

        def worker():
            def work(i):
                with lock:
                    done.append(i)

            return work

        _blocking.take_turns(50, worker, elems=10**9)
        assert sorted(done) == list(range(50))

    def test_shared_reraises(self, monkeypatch):
        monkeypatch.setattr(_blocking, "THREADS", 2)

        def worker():
            def work(i):
                if i == 7:
                    raise ValueError("item 7")

            return work

        with pytest.raises(ValueError, match="item 7"):
            _blocking.take_turns(20, worker, elems=10**9)

    @pytest.mark.parametrize("threads", [1, 2])
    def test_rfa_zero_key_row_named(self, monkeypatch, threads):
        """The zero-row check now runs after the threaded features: it still names the argument, q first."""
        monkeypatch.setattr(_blocking, "THREADS", threads)
        q, k, v = np.random.default_rng(0).normal(size=(3, self.N, self.D))
        k[5] = 0.0
        with pytest.raises(ValueError, match="^k: expected nonzero rows"):
            rfa_attention(q, k, v, n_features=8, sigma=1.0, rng=0)
        q[3] = 0.0
        with pytest.raises(ValueError, match="^q: expected nonzero rows"):
            rfa_attention(q, k, v, n_features=8, sigma=1.0, rng=0)

    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("threads", [1, 2])
    def test_broadcast_and_strided_inputs(self, monkeypatch, causal, threads):
        """Features computed group by group (queries; keys when not causal) from broadcast batch
        axes and non-contiguous inputs: the same as the loop twins, which use whole feature arrays."""
        monkeypatch.setattr(_blocking, "THREADS", threads)
        rng = np.random.default_rng(9)
        q = rng.normal(size=(3, 150, 8))[:, ::2, :] / 2  # strided rows, N = 75
        k = np.swapaxes(rng.normal(size=(1, 8, 75)), -1, -2) / 2  # transposed, batch 1 broadcast to 3
        v = rng.normal(size=(75, 3))  # no batch axes
        w = orthogonal_gaussian(16, 8, rng=0)
        for kind in KINDS:
            kw = dict(n_features=16, rng=None, projection=w, causal=causal, kind=kind)
            close(performer_attention(q, k, v, **kw), performer_attention_loop(q, k, v, **kw), rtol=SELF,
                  what=f"performer {kind}, broadcast/strided inputs vs loop")
        close(linear_attention(q, k, v, causal=causal), linear_attention_loop(q, k, v, causal=causal), rtol=SELF,
              what="linear, broadcast/strided inputs vs loop")
        kw = dict(n_features=8, sigma=1.0, rng=1, causal=causal)
        close(rfa_attention(q, k, v, **kw), rfa_attention_loop(q, k, v, **kw), rtol=SELF, what="rfa, broadcast/strided inputs vs loop")
