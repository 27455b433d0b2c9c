"""Tests of :mod:`refimpl.mixing`: FNet, the gMLP spatial gating unit, FFT convolution and Hyena.

Oracles, each independent of the code under test:

* ``numpy.fft.fft2`` and dense DFT matrices ``exp(−2πi nm/N)`` built here (FNet);
* a NumPy transcription of g-mlp-pytorch's ``SpatialGatingUnit.forward`` (chunk, LayerNorm,
  ``einsum('b n d, m n -> b m d')``, causal ``tril``) and ``scipy.signal.convolve`` for a
  Toeplitz W;
* ``scipy.signal.fftconvolve`` and ``numpy.convolve`` for the causal convolution (in int64 on
  integer data: an exact reference at long L), ``scipy.linalg.toeplitz`` for its matrix;
* a NumPy transcription of safari ``HyenaOperator.forward`` (gate, then ``fftconv`` with skip,
  N − 1 times, then the last gate) with ``numpy.convolve`` as its ``fftconv``;
* explicit products of ``diag`` and ``scipy.linalg.toeplitz`` matrices, and probing with unit
  impulses (``refimpl.attention.materialize``) for ``hyena_matrix``.

Tolerances: :mod:`refimpl._testing` (SELF for loop twins and two algorithms, ORACLE for the oracles).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import mixing
from refimpl._testing import ORACLE, SELF
from refimpl.attention import materialize

from _recording import recorder  # noqa: E402

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, _ = recorder()
_IN_BLOCKS = mixing._in_blocks  # the unpatched helper


def dft(n):
    """The unnormalized DFT matrix, written from its definition."""
    k = np.arange(n)
    return np.exp(-2j * np.pi * np.outer(k, k) / n)


# ---------------------------------------------------------------------------------------------
class TestFnet:
    @pytest.mark.parametrize("shape", [(1, 1), (5, 3), (8, 4), (2, 7, 6), (2, 3, 4, 5)])
    def test_loop_vectorized_fft2_and_dft_matrices(self, shape):
        x = np.random.default_rng(0).normal(size=shape)
        y = mixing.fnet(x)
        close(y, mixing.fnet_loop(x), rtol=SELF, what="fnet vs fnet_loop")
        close(y, np.fft.fft2(x, axes=(-2, -1)).real, rtol=ORACLE, what="fnet vs numpy.fft.fft2 real part")
        FN, Fd = dft(shape[-2]), dft(shape[-1])
        close(y, (FN @ x @ Fd).real, rtol=ORACLE, what="fnet vs Re(F_N X F_d)")
        CN, SN, Cd, Sd = FN.real, -FN.imag, Fd.real, -Fd.imag
        close(y, CN @ x @ Cd - SN @ x @ Sd, rtol=ORACLE, what="fnet vs C_N X C_d - S_N X S_d")

    @pytest.mark.parametrize("N, d", [(1, 1), (4, 1), (5, 3), (6, 4)])
    def test_matrix_is_the_operator(self, N, d):
        M = mixing.fnet_matrix(N, d)
        x = np.random.default_rng(1).normal(size=(N, d))
        close(M @ x.ravel(), mixing.fnet(x).ravel(), rtol=ORACLE, what="fnet_matrix @ vec(x) vs fnet")
        close(M, np.kron(dft(N), dft(d)).real, rtol=ORACLE, what="fnet_matrix vs Re(F_N ⊗ F_d)")
        basis = np.eye(N * d).reshape(N * d, N, d)  # every unit impulse
        close(M, mixing.fnet(basis).reshape(N * d, N * d).T, rtol=ORACLE, what="fnet_matrix vs fnet on basis")
        np.testing.assert_array_equal(M, M.T)

    @pytest.mark.parametrize("N, d", [(1, 1), (12, 6), (32, 1), (7, 5), (16, 8)])
    def test_matrix_squares_to_a_multiple_of_the_even_projector(self, N, d):
        """M² = N d · P_even: every non-zero singular value is √(N d), the point-odd inputs are annihilated."""
        M = mixing.fnet_matrix(N, d)
        idx = np.arange(N * d).reshape(N, d)
        J = np.zeros((N * d, N * d))
        J[idx.ravel(), idx[(-np.arange(N)) % N][:, (-np.arange(d)) % d].ravel()] = 1.0  # (n, k) ↦ (−n, −k)
        P_even = (np.eye(N * d) + J) / 2
        close(M @ M, N * d * P_even, rtol=ORACLE, what="fnet_matrix² vs N d · P_even")
        s = np.linalg.svd(M, compute_uv=False)
        kept = s > 1e-8 * s[0]
        assert kept.sum() == round(np.trace(P_even))  # rank = dim of the point-even subspace
        close(s[kept], np.full(kept.sum(), math.sqrt(N * d)), rtol=ORACLE, what="non-zero singular values vs √(N d)")

    def test_sequence_only_matrix_is_the_cosine_matrix(self):
        N = 9
        close(mixing.fnet_matrix(N), np.cos(2 * np.pi * np.outer(np.arange(N), np.arange(N)) / N),
              rtol=ORACLE, what="fnet_matrix(N, 1) vs cos(2πnm/N)")

    def test_ifft_only_rescales(self):
        x = np.random.default_rng(2).normal(size=(6, 5))
        close(np.fft.ifft2(x).real * x.size, mixing.fnet(x), rtol=ORACLE, what="Re ifft2 · Nd vs fnet")

    def test_real_part_between_the_transforms_is_a_different_operator(self):
        x = np.random.default_rng(3).normal(size=(6, 5))
        wrong = np.fft.fft(np.fft.fft(x, axis=-1).real, axis=-2).real
        assert np.max(np.abs(wrong - mixing.fnet(x))) > 0.1

    def test_not_shift_equivariant(self):
        x = np.random.default_rng(4).normal(size=(8, 1))
        shifted = mixing.fnet(np.roll(x, 1, axis=0))
        assert np.max(np.abs(shifted - np.roll(mixing.fnet(x), 1, axis=0))) > 0.1
        # what a shift does do: multiply the DFT by a phase ramp (before the real part)
        ramp = np.exp(-2j * np.pi * np.arange(8) / 8)[:, None]
        close(shifted, (ramp * np.fft.fft(x, axis=0)).real, rtol=ORACLE, what="fnet(shift x) vs Re(ramp · F x)")

    def test_linear(self):
        rng = np.random.default_rng(5)
        x, z = rng.normal(size=(2, 7, 3))
        close(mixing.fnet(2.0 * x - 3.0 * z), 2.0 * mixing.fnet(x) - 3.0 * mixing.fnet(z), rtol=SELF, what="fnet linear")

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^x"):
            mixing.fnet(np.ones(5))
        with pytest.raises(ValueError, match="^x"):
            mixing.fnet_loop(np.ones((0, 3)))
        with pytest.raises(TypeError, match="^x"):
            mixing.fnet(np.ones((3, 2)) * 1j)
        with pytest.raises(ValueError, match="^x"):
            mixing.fnet([[1.0, np.nan]])
        with pytest.raises(ValueError, match="^N"):
            mixing.fnet_matrix(0)
        with pytest.raises(ValueError, match="^d"):
            mixing.fnet_matrix(3, 0)
        with pytest.raises(TypeError, match="^N"):
            mixing.fnet_matrix(2.5)


# ---------------------------------------------------------------------------------------------
def gmlp_pytorch_sgu(x, weight, bias, causal=False, eps=1e-5):
    """NumPy transcription of g-mlp-pytorch 0.1.5 ``SpatialGatingUnit.forward`` (heads = 1, act = Identity)."""
    n = x.shape[-2]
    res, gate = np.split(x, 2, axis=-1)  # x.chunk(2, dim=-1)
    mu = gate.mean(-1, keepdims=True)
    gate = (gate - mu) / np.sqrt(gate.var(-1, keepdims=True) + eps)  # nn.LayerNorm(dim // 2), γ = 1, β = 0
    weight, bias = weight[:n, :n], bias[:n]
    if causal:
        weight = np.where(np.triu(np.ones((n, n), bool), 1), 0.0, weight)  # masked_fill(triu(1), 0)
    gate = np.einsum("...nd,mn->...md", gate, weight) + bias[:, None]
    return gate * res  # act(gate) * res


class TestSpatialGatingUnit:
    @pytest.mark.parametrize("causal", [False, True])
    @pytest.mark.parametrize("shape", [(1, 2), (5, 4), (3, 6, 8)])
    def test_loop_vectorized_and_transcription(self, shape, causal):
        rng = np.random.default_rng(10)
        x = rng.normal(size=shape)
        N = shape[-2]
        w, b = rng.normal(size=(N, N)), rng.normal(size=N)
        s = mixing.spatial_gating_unit(x, w, b, causal=causal)
        close(s, mixing.spatial_gating_unit_loop(x, w, b, causal=causal), rtol=SELF, what="sgu vs sgu_loop")
        close(s, gmlp_pytorch_sgu(x, w, b, causal), rtol=ORACLE, what="sgu vs g-mlp-pytorch transcription")

    def test_init_is_the_bypass(self):
        x = np.random.default_rng(11).normal(size=(2, 7, 6))
        np.testing.assert_array_equal(mixing.spatial_gating_unit(x, np.zeros((7, 7)), np.ones(7)), x[..., :3])

    @pytest.mark.parametrize("causal_kernel", [False, True])
    def test_toeplitz_w_is_a_convolution(self, causal_kernel):
        rng = np.random.default_rng(12)
        N, e = 16, 3
        lags = np.arange(-(N - 1), N)
        kernel = rng.normal(size=2 * N - 1) * np.exp(-0.3 * np.abs(lags))  # w_ℓ, ℓ = −(N−1) … N−1
        if causal_kernel:
            kernel[lags < 0] = 0.0
        W = scipy.linalg.toeplitz(kernel[N - 1 :], kernel[N - 1 :: -1])  # W_ij = w_{i−j}
        x = rng.normal(size=(N, 2 * e))
        ones = np.concatenate([np.ones((N, e)), x[:, e:]], axis=1)  # z1 = 1: the output is the gate
        g = mixing.spatial_gating_unit(ones, W, 0.0)
        ln = mixing._layer_norm(x[:, e:])
        conv = np.stack([scipy.signal.convolve(ln[:, c], kernel)[N - 1 : 2 * N - 1] for c in range(e)], axis=1)
        close(g, conv, rtol=ORACLE, what="sgu with Toeplitz W vs scipy.signal.convolve")
        if causal_kernel:  # a causal kernel needs no mask, and equals the FFT convolution
            close(mixing.spatial_gating_unit(ones, W, 0.0, causal=True), g, rtol=ORACLE, what="causal Toeplitz sgu")
            close(g, mixing.fft_conv(ln, np.repeat(kernel[N - 1 :, None], e, 1)), rtol=ORACLE, what="sgu vs fft_conv")

    @settings(max_examples=25)
    @given(seed=st.integers(0, 2**16), t=st.integers(0, 9))
    def test_causal_mask_ignores_the_future(self, seed, t):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(10, 4))
        w, b = rng.normal(size=(10, 10)), rng.normal(size=10)
        x2 = x.copy()
        x2[t + 1 :] += rng.normal(size=x2[t + 1 :].shape)
        y, y2 = (mixing.spatial_gating_unit(z, w, b, causal=True) for z in (x, x2))
        np.testing.assert_array_equal(y[: t + 1], y2[: t + 1])

    def test_bad_input(self):
        x, w, b = np.ones((4, 6)), np.zeros((4, 4)), np.ones(4)
        with pytest.raises(ValueError, match="^x.*even"):
            mixing.spatial_gating_unit(np.ones((4, 5)), w, b)
        with pytest.raises(ValueError, match="^x"):
            mixing.spatial_gating_unit(np.ones(6), w, b)
        with pytest.raises(ValueError, match="^w"):
            mixing.spatial_gating_unit(x, np.zeros((4, 3)), b)
        with pytest.raises(ValueError, match="^w"):
            mixing.spatial_gating_unit_loop(x, np.zeros((5, 5)), b)
        with pytest.raises(ValueError, match="^b"):
            mixing.spatial_gating_unit(x, w, np.ones(3))
        with pytest.raises(TypeError, match="^causal"):
            mixing.spatial_gating_unit(x, w, b, causal="yes")
        with pytest.raises(ValueError, match="^w"):
            mixing.spatial_gating_unit(x, np.full((4, 4), np.inf), b)


# ---------------------------------------------------------------------------------------------
class TestFftConv:
    @pytest.mark.parametrize("N, M", [(1, 1), (7, 7), (64, 64), (50, 5), (10, 25), (33, 1)])
    def test_loop_vectorized_and_scipy(self, N, M):
        rng = np.random.default_rng(20)
        u, h = rng.normal(size=(2, N, 3)), rng.normal(size=(M, 3))
        y = mixing.fft_conv(u, h)
        close(y, mixing.fft_conv_loop(u, h), rtol=SELF, what="fft_conv vs fft_conv_loop")
        ref = scipy.signal.fftconvolve(u, h[None], axes=-2)[:, :N]
        close(y, ref, rtol=ORACLE, what="fft_conv vs scipy.signal.fftconvolve")
        for b in range(2):
            for c in range(3):
                close(y[b, :, c], np.convolve(u[b, :, c], h[:, c])[:N], rtol=ORACLE, what="fft_conv vs numpy.convolve")

    def test_matrix_form(self):
        rng = np.random.default_rng(21)
        u, h = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
        T = mixing.causal_toeplitz(h)
        for c in range(2):
            close(T[c], scipy.linalg.toeplitz(h[:, c], np.zeros(40)), rtol=ORACLE, what="causal_toeplitz vs scipy")
            close(mixing.fft_conv(u, h)[:, c], T[c] @ u[:, c], rtol=ORACLE, what="fft_conv vs Toeplitz product")
        close(mixing.causal_toeplitz(h[:5], 8)[0], scipy.linalg.toeplitz(np.r_[h[:5, 0], np.zeros(3)], np.zeros(8)),
              rtol=ORACLE, what="causal_toeplitz short filter")

    def test_complex_and_shared_filter(self):
        rng = np.random.default_rng(22)
        u = rng.normal(size=(30, 4)) + 1j * rng.normal(size=(30, 4))
        h = rng.normal(size=(30, 1)) - 1j * rng.normal(size=(30, 1))
        y = mixing.fft_conv(u, h)
        assert y.dtype == np.complex128
        close(y, mixing.fft_conv_loop(u, h), rtol=SELF, what="complex fft_conv vs loop")
        close(y[:, 3], np.convolve(u[:, 3], h[:, 0])[:30], rtol=ORACLE, what="complex fft_conv vs numpy.convolve")

    @pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
    def test_long_read_only_and_strided_inputs(self, shared):
        # 1300 steps: the transposing copies' tiles of 512 steps, the last one partial; inputs read-only, u a
        # transposed view and h a strided one, neither copied nor written (as_array(copy=False))
        rng = np.random.default_rng(27)
        u = np.swapaxes(rng.normal(size=(2, 21, 1300)), -1, -2)
        h = rng.normal(size=(900, 2 if shared else 42))[:, ::2]  # every other column: (900, 1) or (900, 21)
        u0, h0 = u.copy(), h.copy()
        u.flags.writeable = h.flags.writeable = False
        y = mixing.fft_conv(u, h)
        np.testing.assert_array_equal(u, u0)
        np.testing.assert_array_equal(h, h0)
        close(y, mixing.fft_conv(u0, h0), rtol=SELF, what="fft_conv of views vs of contiguous copies")
        for b, c in ((0, 0), (1, 7), (1, 20)):
            close(y[b, :, c], np.convolve(u0[b, :, c], h0[:, 0 if shared else c])[:1300], rtol=ORACLE,
                  what="long fft_conv vs numpy.convolve")

    @pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
    def test_channel_groups(self, shared):
        # 37 channels: transformed in groups (16, 16, 5), each group against the loop twin and numpy.convolve
        rng = np.random.default_rng(24)
        u, h = rng.normal(size=(2, 45, 37)), rng.normal(size=(45, 1 if shared else 37))
        y = mixing.fft_conv(u, h)
        close(y, mixing.fft_conv_loop(u, h), rtol=SELF, what="fft_conv in channel groups vs loop")
        for c in (0, 15, 16, 31, 32, 36):
            close(y[1, :, c], np.convolve(u[1, :, c], h[:, 0 if shared else c])[:45], rtol=ORACLE,
                  what="fft_conv in channel groups vs numpy.convolve")

    @pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
    def test_threads_do_not_change_the_result(self, monkeypatch, shared):
        # the channel groups (16, 16, 16, 2 of 50: the smallest groups, as for long sequences) are taken by
        # 1, 2 or 3 threads, at a size above THREAD_MIN_ELEMS: bitwise the same output; complex u too
        import refimpl._blocking as blocking

        monkeypatch.setattr(blocking, "WORKSPACE_FLOATS", 1)
        rng = np.random.default_rng(25)
        u, h = rng.normal(size=(2, 400, 50)), rng.normal(size=(300, 1 if shared else 50))
        uc = u + 1j * rng.normal(size=u.shape)
        groups = []

        def recorded(run, n, size, elems):
            groups.append((n, size, elems))
            _IN_BLOCKS(run, n, size, elems)

        monkeypatch.setattr(mixing, "_in_blocks", recorded)
        out = {}
        for threads in (1, 2, 3):
            monkeypatch.setattr(blocking, "THREADS", threads)
            out[threads] = mixing.fft_conv(u, h), mixing.fft_conv(uc, h)
        assert groups[0][:2] == (50, 16) and groups[0][2] >= blocking.THREAD_MIN_ELEMS
        for threads in (2, 3):
            assert all(np.array_equal(a, b) for a, b in zip(out[threads], out[1]))
        close(out[2][0], mixing.fft_conv_loop(u, h), rtol=SELF, what="fft_conv in threads vs loop")

    @pytest.mark.parametrize("L", [256, 4096, 65536])
    def test_normwise_accuracy_against_an_exact_integer_convolution(self, L):
        """Integer data: numpy.convolve in int64 is exact (|y| < L·2^20 < 2^63); the FFT route is accurate norm-wise."""
        rng = np.random.default_rng(L)
        u, h = rng.integers(-2**10, 2**10, size=(2, L))
        exact = np.convolve(u, h)[:L].astype(float)
        y = mixing.fft_conv(u[:, None].astype(float), h[:, None].astype(float))[:, 0]
        assert np.linalg.norm(y - exact) <= 1e-14 * np.linalg.norm(exact)
        assert np.max(np.abs(y - exact)) <= 1e-14 * np.max(np.abs(exact))

    @staticmethod
    def _integer_case(kind, L, rng):
        """Integer data with an exact int64 reference: zero-mean, non-negative, or cancelling (a second
        difference of a smooth signal, the reference from its three non-zero taps)."""
        if kind == "zero-mean":
            u, h = rng.integers(-2**10, 2**10, size=(2, L))
        elif kind == "non-negative":
            u, h = rng.integers(0, 2**10, size=(2, L))
        elif kind == "short filter":
            u = rng.integers(-2**10, 2**10, size=L)
            h = np.zeros(L, dtype=np.int64); h[:17] = rng.integers(-2**10, 2**10, size=17)  # M = 17 taps
        else:
            u = np.round(2.0**30 * np.sin(2 * np.pi * np.arange(L) / 4096)).astype(np.int64)
            h = np.zeros(L, dtype=np.int64); h[:3] = (1, -2, 1)
        exact = np.convolve(u, h[: np.flatnonzero(h)[-1] + 1])[:L].astype(float)
        return u.astype(float), h.astype(float), exact

    @staticmethod
    def _spectral_bound(u, h, n):
        """ε log₂n (‖u‖ max|ĥ| + max|û| ‖h‖): the bound of §10.3 with c = 1, for transforms of length n."""
        eps = np.finfo(float).eps / 2
        return eps * np.log2(n) * (np.linalg.norm(u) * np.abs(np.fft.rfft(h, n)).max()
                                   + np.abs(np.fft.rfft(u, n)).max() * np.linalg.norm(h))

    @pytest.mark.parametrize("kind", ["zero-mean", "non-negative", "cancelling", "short filter"])
    @pytest.mark.parametrize("L", [256, 3000, 8192])  # 3000: n = 6000, a mixed-radix (2, 3, 5) transform
    def test_error_within_the_spectral_bound(self, kind, L):
        """‖ŷ − y‖ ≤ 0.2·ε log₂n (‖u‖ max|ĥ| + max|û| ‖h‖) (the bound of §10.3 with c = 1, and a margin)."""
        u, h, exact = self._integer_case(kind, L, np.random.default_rng(L + len(kind)))
        err = mixing.fft_conv(u[:, None], h[:, None])[:, 0] - exact
        assert np.linalg.norm(err) <= 0.2 * self._spectral_bound(u, h, scipy.fft.next_fast_len(2 * L - 1, real=True))
        if kind == "cancelling":  # not within a few ε·max|y| (for this u): a tight max|y|-relative tolerance would reject fft_conv
            eps = np.finfo(float).eps / 2
            assert np.max(np.abs(err)) > (1000 if L >= 4096 else 100) * eps * np.max(np.abs(exact))  # measured 1113 at L = 256
            assert np.array_equal(mixing.fft_conv_loop(u[:, None], h[:, None])[:, 0], exact)  # the direct sum is exact

    @pytest.mark.parametrize("L, M", [(1009, 7), (2047, 683), (5000, 5000), (12289, 17)])
    @pytest.mark.parametrize("kind", ["zero-mean", "non-negative"])
    def test_error_within_the_spectral_bound_for_short_filters(self, kind, L, M):
        """A truly short filter (M < L: padding to n = next_fast_len(L + M − 1)) and odd or prime lengths.

        The bound uses the n that fft_conv pads to; measured ≤ 0.08 of it (c = 1) over 216 such cases.
        """
        rng = np.random.default_rng(L + M)
        low = -2**10 if kind == "zero-mean" else 0
        u, h = rng.integers(low, 2**10, size=L), rng.integers(low, 2**10, size=M)
        exact = np.convolve(u, h)[:L].astype(float)  # exact in int64: |y| ≤ L·2^20
        u, h = u.astype(float), h.astype(float)
        err = mixing.fft_conv(u[:, None], h[:, None])[:, 0] - exact
        assert np.linalg.norm(err) <= 0.2 * self._spectral_bound(u, h, scipy.fft.next_fast_len(L + M - 1, real=True))

    def test_error_is_not_entrywise_where_the_output_vanishes(self):
        rng = np.random.default_rng(7)
        L = 1024
        u = np.zeros((L, 1)); u[L // 2:] = rng.normal(size=(L - L // 2, 1))  # exact output 0 before L/2
        h = rng.normal(size=(L, 1)) * np.exp(-15.35 * np.linspace(0, 1, L))[:, None]
        y = mixing.fft_conv(u, h)
        assert np.max(np.abs(y[: L // 2])) <= 1e-14 * np.max(np.abs(y))  # round-off relative to max|y| ...
        close(y, mixing.fft_conv_loop(u, h), rtol=SELF, what="fft_conv vs loop (norm-wise)")

    def test_padding_prevents_wrap_around(self):
        rng = np.random.default_rng(23)
        u, h = rng.normal(size=(32, 1)), rng.normal(size=(32, 1))
        circular = np.fft.ifft(np.fft.fft(u[:, 0]) * np.fft.fft(h[:, 0])).real  # no padding: circular
        linear = np.convolve(u[:, 0], h[:, 0])[:32]
        assert np.max(np.abs(circular - linear)) > 0.5
        close(circular, linear + np.r_[np.convolve(u[:, 0], h[:, 0])[32:], 0.0], rtol=ORACLE, what="circular = linear + wrapped tail")
        close(mixing.fft_conv(u, h)[:, 0], linear, rtol=ORACLE, what="fft_conv is linear, not circular")

    @settings(max_examples=30)
    @given(seed=st.integers(0, 2**16), N=st.integers(2, 80), frac=st.floats(0.0, 0.99))
    def test_causality(self, seed, N, frac):
        rng = np.random.default_rng(seed)
        t = int(frac * (N - 1))
        u, h = rng.normal(size=(N, 2)), rng.normal(size=(N, 2))
        u2 = u.copy()
        u2[t + 1 :] += 100.0 * rng.normal(size=u2[t + 1 :].shape)
        y, y2 = mixing.fft_conv(u, h), mixing.fft_conv(u2, h)
        scale = np.max(np.abs(y2))
        assert np.max(np.abs(y[: t + 1] - y2[: t + 1])) <= 1e-13 * scale  # FFT round-off only

    def test_bad_input(self):
        u, h = np.ones((8, 3)), np.ones((8, 3))
        with pytest.raises(ValueError, match="^u"):
            mixing.fft_conv(np.ones(8), h)
        with pytest.raises(ValueError, match="^u"):
            mixing.fft_conv_loop(np.ones((0, 3)), h)
        with pytest.raises(ValueError, match="^h"):
            mixing.fft_conv(u, np.ones((8, 2)))
        with pytest.raises(ValueError, match="^h"):
            mixing.fft_conv(u, np.ones(8))
        with pytest.raises(ValueError, match="^h"):
            mixing.fft_conv_loop(u, np.ones((0, 3)))
        with pytest.raises(ValueError, match="^h"):
            mixing.fft_conv(u, np.full((8, 3), np.nan))
        with pytest.raises(TypeError, match="^u"):
            mixing.fft_conv("abc", h)
        with pytest.raises(ValueError, match="^h"):
            mixing.causal_toeplitz(np.ones(4))
        with pytest.raises(ValueError, match="^N"):
            mixing.causal_toeplitz(np.ones((4, 1)), 0)


# ---------------------------------------------------------------------------------------------
class TestHyenaFilter:
    @pytest.mark.parametrize("kw", [{}, {"emb_dim": 7, "depth": 3, "width": 5}, {"n_filters": 3, "shift": 0.1, "freq": 2.0}])
    def test_loop_vs_vectorized(self, kw):
        h = mixing.hyena_filter(33, 4, rng=0, **kw)
        assert h.shape == (kw.get("n_filters", 1), 33, 4)
        close(h, mixing.hyena_filter_loop(33, 4, rng=0, **kw), rtol=SELF, what="hyena_filter vs loop")

    def test_deterministic_in_the_rng(self):
        a = mixing.hyena_filter(20, 3, rng=5)
        np.testing.assert_array_equal(a, mixing.hyena_filter(20, 3, rng=np.random.default_rng(5)))
        assert np.max(np.abs(a - mixing.hyena_filter(20, 3, rng=6))) > 1e-3

    def test_window_is_the_exponential_decay(self):
        L, d, n = 50, 4, 2
        t = np.linspace(0.0, 1.0, L)[:, None]
        rates = {}
        for target in (1e-2, 1e-4):
            rates[target] = -np.log(target) * np.linspace(1 / 1.5, 1 / 0.3, n * d)  # |log target| / pct
        base = {tg: mixing.hyena_filter(L, d, n_filters=n, target=tg, rng=1).transpose(1, 0, 2).reshape(L, -1)
                for tg in rates}
        # same FFN (same rng): the ratio of two filters is the ratio of their windows
        close(base[1e-2] * np.exp(-t * rates[1e-4]), base[1e-4] * np.exp(-t * rates[1e-2]), rtol=ORACLE,
              what="hyena_filter window = exp(-t |α_c|)")
        # with a shift the filter is FFN · (window + shift)
        shifted = mixing.hyena_filter(L, d, n_filters=n, shift=0.5, rng=1).transpose(1, 0, 2).reshape(L, -1)
        close(shifted * np.exp(-t * rates[1e-2]), base[1e-2] * (np.exp(-t * rates[1e-2]) + 0.5), rtol=ORACLE,
              what="hyena_filter shift")

    @staticmethod
    def safari_filter(L, d_model, order, emb_dim, linears, freq, fast=0.3, slow=1.5, target=1e-2, shift=0.0, l_max=None):
        """A NumPy transcription of safari's ``HyenaFilter.filter(L)`` with torch-layout weights.

        ``linears`` is [(weight (out, in), bias or None), …] of ``implicit_filter``; the steps are
        ``PositionalEmbedding`` (z = [t, Re e^{−i f w}, Im e^{−i f w}]), ``Linear → Sin`` layers
        (one ``Sin`` module: the same ``freq``, scalar or (width,), in every layer), the last
        ``Linear`` (no bias) and ``ExponentialModulation``; then the channel split ``'l (o d) -> o d l'``. The
        features and time stamps are built for ``seq_len = l_max`` (default L) and their first L
        rows are used.
        """
        n_grid = L if l_max is None else l_max
        t = np.linspace(0, 1, n_grid)[:L, None]
        bands = (emb_dim - 1) // 2
        t_rescaled = np.linspace(0, n_grid - 1, n_grid)[:L, None]
        w = 2 * math.pi * t_rescaled / n_grid
        f = np.linspace(1e-4, bands - 1, bands)[None, :]
        zc = np.exp(-1j * f * w)
        z = np.concatenate([t, zc.real, zc.imag], axis=-1)
        for weight, bias in linears[:-1]:
            z = np.sin(freq * (z @ weight.T + bias))
        h = z @ linears[-1][0].T
        max_decay, min_decay = math.log(target) / fast, math.log(target) / slow
        deltas = np.linspace(min_decay, max_decay, d_model * order)[None, :]
        h = h * (np.exp(-t * np.abs(deltas)) + shift)
        return h.reshape(L, order, d_model).transpose(1, 0, 2)

    @pytest.mark.parametrize("func", [mixing.hyena_filter, mixing.hyena_filter_loop])
    @pytest.mark.parametrize("L, d, n, emb_dim, width, depth", [(64, 4, 2, 3, 16, 3), (17, 3, 3, 5, 8, 2), (1, 2, 1, 3, 4, 1)])
    def test_given_weights_vs_safari_transcription(self, func, L, d, n, emb_dim, width, depth):
        rng = np.random.default_rng(L + d)
        sizes = [emb_dim] + [width] * depth
        linears = [(rng.normal(size=(o, i)), rng.normal(size=o)) for i, o in zip(sizes[:-1], sizes[1:])]
        linears.append((rng.normal(size=(n * d, width)), None))
        weights = [a for W, b in linears[:-1] for a in (W.T, b)] + [linears[-1][0].T]
        h = func(L, d, n_filters=n, emb_dim=emb_dim, width=width, depth=depth, freq=1.3, shift=0.2, weights=weights)
        ref = self.safari_filter(L, d, n, emb_dim, linears, 1.3, shift=0.2)
        close(h, ref, rtol=ORACLE, what=f"{func.__name__}(weights=…) vs safari transcription")

    @pytest.mark.parametrize("func", [mixing.hyena_filter, mixing.hyena_filter_loop])
    def test_freq_vector_shared_by_the_layers_vs_safari_transcription(self, func):
        """A trained ``Sin.freq`` (one value per hidden unit, one module for all layers) is the vector ``freq``."""
        rng = np.random.default_rng(11)
        L, d, n, emb_dim, width, depth = 40, 3, 2, 5, 8, 3
        sizes = [emb_dim] + [width] * depth
        linears = [(rng.normal(size=(o, i)), rng.normal(size=o)) for i, o in zip(sizes[:-1], sizes[1:])]
        linears.append((rng.normal(size=(n * d, width)), None))
        weights = [a for W, b in linears[:-1] for a in (W.T, b)] + [linears[-1][0].T]
        freq = rng.uniform(0.5, 1.5, width)
        ref = self.safari_filter(L, d, n, emb_dim, linears, freq)
        h = func(L, d, n_filters=n, emb_dim=emb_dim, width=width, depth=depth, freq=freq, weights=weights)
        close(h, ref, rtol=ORACLE, what=f"{func.__name__}(freq=vector) vs safari transcription")
        scalar = func(L, d, n_filters=n, emb_dim=emb_dim, width=width, depth=depth, freq=float(freq.mean()), weights=weights)
        assert np.max(np.abs(scalar - ref)) > 1e-2 * np.max(np.abs(ref))  # a scalar cannot represent it

    def test_shorter_sequence_uses_the_l_max_grid(self):
        """safari with l_max > L == hyena_filter(l_max)[:, :L], not hyena_filter(L)."""
        rng = np.random.default_rng(12)
        L, l_max, d, n, emb_dim, width, depth = 30, 64, 3, 2, 5, 16, 3
        sizes = [emb_dim] + [width] * depth
        linears = [(rng.uniform(-0.5, 0.5, size=(o, i)), rng.uniform(-0.5, 0.5, size=o)) for i, o in zip(sizes[:-1], sizes[1:])]
        linears.append((rng.uniform(-0.25, 0.25, size=(n * d, width)), None))
        weights = [a for W, b in linears[:-1] for a in (W.T, b)] + [linears[-1][0].T]
        ref = self.safari_filter(L, d, n, emb_dim, linears, 1.0, l_max=l_max)
        kw = dict(n_filters=n, emb_dim=emb_dim, width=width, depth=depth, weights=weights)
        close(mixing.hyena_filter(l_max, d, **kw)[:, :L], ref, rtol=ORACLE, what="hyena_filter(l_max)[:, :L] vs safari, L < l_max")
        assert np.linalg.norm(mixing.hyena_filter(L, d, **kw) - ref) > 0.05 * np.linalg.norm(ref)

    def test_given_weights_reproduce_the_drawn_ones(self):
        # the weights that rng=4 draws, given explicitly, give the same filter exactly
        rng = np.random.default_rng(4)
        sizes = [3, 16, 16, 16]
        weights = []
        for i, o in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(i)
            weights += [rng.uniform(-bound, bound, (i, o)), rng.uniform(-bound, bound, o)]
        weights.append(rng.uniform(-0.25, 0.25, (16, 6)))
        np.testing.assert_array_equal(mixing.hyena_filter(30, 3, n_filters=2, weights=weights),
                                      mixing.hyena_filter(30, 3, n_filters=2, rng=4))

    def test_given_weights_errors(self):
        W = [np.ones((3, 4)), np.ones(4), np.ones((4, 2))]
        kw = dict(width=4, depth=1)
        assert mixing.hyena_filter(5, 2, weights=W, **kw).shape == (1, 5, 2)
        with pytest.raises(ValueError, match="^rng: expected None when weights"):
            mixing.hyena_filter(5, 2, weights=W, rng=0, **kw)
        with pytest.raises(ValueError, match="^weights: expected 3 arrays"):
            mixing.hyena_filter(5, 2, weights=W[:2], **kw)
        with pytest.raises(TypeError, match="^weights: expected a sequence"):
            mixing.hyena_filter(5, 2, weights=3.0, **kw)
        with pytest.raises(ValueError, match="^weights\\[0\\]: expected W_1 of shape \\(3, 4\\)"):
            mixing.hyena_filter_loop(5, 2, weights=[np.ones((4, 3))] + W[1:], **kw)
        with pytest.raises(ValueError, match="^weights\\[1\\]"):
            mixing.hyena_filter(5, 2, weights=[W[0], np.ones(3), W[2]], **kw)
        with pytest.raises(ValueError, match="^weights\\[2\\]: expected W_out of shape \\(4, 2\\)"):
            mixing.hyena_filter(5, 2, weights=W[:2] + [np.ones((4, 3))], **kw)
        with pytest.raises(ValueError, match="^weights\\[0\\]: expected finite"):
            mixing.hyena_filter(5, 2, weights=[np.full((3, 4), np.nan)] + W[1:], **kw)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^L"):
            mixing.hyena_filter(0, 3)
        with pytest.raises(TypeError, match="^L"):
            mixing.hyena_filter(3.0, 3)
        with pytest.raises(ValueError, match="^d"):
            mixing.hyena_filter(5, 0)
        with pytest.raises(ValueError, match="^n_filters"):
            mixing.hyena_filter_loop(5, 2, n_filters=0)
        with pytest.raises(ValueError, match="^emb_dim"):
            mixing.hyena_filter(5, 2, emb_dim=4)
        with pytest.raises(ValueError, match="^width"):
            mixing.hyena_filter(5, 2, width=0)
        with pytest.raises(ValueError, match="^freq"):
            mixing.hyena_filter(5, 2, freq=-1.0)
        with pytest.raises(ValueError, match=r"^freq: expected a positive scalar or shape \(16,\)"):
            mixing.hyena_filter(5, 2, freq=np.ones(4))
        with pytest.raises(ValueError, match="^freq"):
            mixing.hyena_filter_loop(5, 2, freq=np.full(16, np.nan))
        with pytest.raises(ValueError, match="^fast_decay_pct"):
            mixing.hyena_filter(5, 2, fast_decay_pct=0.0)
        with pytest.raises(ValueError, match="^target"):
            mixing.hyena_filter(5, 2, target=2.0)
        with pytest.raises(TypeError, match="^rng"):
            mixing.hyena_filter(5, 2, rng="seed")


# ---------------------------------------------------------------------------------------------
def hyena_inputs(seed, L=24, D=3, order=2, batch=(2,)):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=batch + (L, D))
    w_in = rng.normal(size=(D, (order + 1) * D)) / np.sqrt(D)
    short = rng.normal(size=(3, (order + 1) * D))
    filters = mixing.hyena_filter(L, D, n_filters=order, rng=seed)
    return u, w_in, short, filters


def safari_hyena_forward(v, x_code, k, bias):
    """NumPy transcription of safari ``HyenaOperator.forward`` after the projections.

    ``x_code`` (order, L, D) are the code's x_0 … x_{order−1}; ``k`` (order−1, L, D) its long
    filters, ``bias`` (order−1, D) the skip of ``fftconv``; the convolution is ``numpy.convolve``.
    """
    L = v.shape[0]
    for o, x_i in enumerate(x_code[1:][::-1]):  # for o, x_i in enumerate(reversed(x[1:]))
        v = v * x_i
        conv = np.stack([np.convolve(v[:, c], k[o][:, c])[:L] for c in range(v.shape[1])], axis=1)
        v = conv + v * bias[o]  # fftconv(v, k[o], bias[o])
    return v * x_code[0]


class TestHyenaOperator:
    @pytest.mark.parametrize("order", [1, 2, 3])
    def test_loop_vs_vectorized(self, order):
        u, w_in, short, filters = hyena_inputs(30 + order, order=order)
        skip = np.random.default_rng(order).normal(size=(order, 3))
        y, v, x = mixing.hyena_operator(u, w_in, filters, short_filter=short, skip=skip, return_projections=True)
        y2, v2, x2 = mixing.hyena_operator_loop(u, w_in, filters, short_filter=short, skip=skip, return_projections=True)
        close(y, y2, rtol=SELF, what="hyena_operator vs loop")
        close(np.r_[v.ravel(), x.ravel()], np.r_[v2.ravel(), x2.ravel()], rtol=SELF, what="hyena projections vs loop")
        close(mixing.hyena_recurrence(v, x, filters), mixing.hyena_recurrence_loop(v, x, filters), rtol=SELF,
              what="hyena_recurrence vs loop")

    def test_projections_oracle(self):
        u, w_in, short, filters = hyena_inputs(40)
        rng = np.random.default_rng(41)
        b_in, short_bias = rng.normal(size=(2, 9))
        _, v, x = mixing.hyena_operator(u, w_in, filters, b_in=b_in, short_filter=short, short_bias=short_bias,
                                        return_projections=True)
        p = np.einsum("bli,ic->blc", u, w_in) + b_in
        p = np.stack([[np.convolve(p[b, :, c], short[:, c])[:24] for c in range(9)] for b in range(2)]).transpose(0, 2, 1)
        p = p + short_bias
        close(v, p[..., :3], rtol=ORACLE, what="hyena v vs dense + short conv")
        close(x, np.stack([p[..., 3:6], p[..., 6:9]]), rtol=ORACLE, what="hyena x vs dense + short conv")
        y2, v2, x2 = mixing.hyena_operator_loop(u, w_in, filters, b_in=b_in, short_filter=short, short_bias=short_bias,
                                                return_projections=True)
        close(np.r_[v.ravel(), x.ravel()], np.r_[v2.ravel(), x2.ravel()], rtol=SELF, what="hyena projections with biases vs loop")

    @pytest.mark.parametrize("order", [2, 3])
    def test_whole_safari_operator_transcription(self, order):
        """safari ``HyenaOperator.forward`` (without out_proj), written in NumPy, against hyena_operator."""
        rng = np.random.default_rng(60 + order)
        L, D = 18, 2
        P = (order + 1) * D
        u = rng.normal(size=(L, D))
        W_lin, b_lin = rng.normal(size=(P, D)) / np.sqrt(D), rng.normal(size=P)  # nn.Linear(D, P): x @ W.T + b
        w_conv, b_conv = rng.normal(size=(P, 1, 3)), rng.normal(size=P)  # nn.Conv1d(P, P, 3, padding=2, groups=P)
        k = rng.normal(size=(order - 1, D, L)) * np.exp(-np.arange(L) / 5.0)  # 'o d l'
        bias = rng.normal(size=(order - 1, D))
        # --- the reference code, layout (d, l) ---
        z = (u @ W_lin.T + b_lin).T  # in_proj, 'b l d -> b d l'
        zp = np.pad(z, ((0, 0), (2, 2)))
        uc = np.stack([[b_conv[c] + np.dot(w_conv[c, 0], zp[c, t : t + 3]) for t in range(L)] for c in range(P)])  # [..., :l]
        chunks = np.split(uc, order + 1, axis=0)
        x_code, v = chunks[:-1], chunks[-1]  # *x, v = uc.split(d_model)
        for o, x_i in enumerate(x_code[1:][::-1]):
            v = v * x_i
            v = np.stack([np.convolve(v[c], k[o][c])[:L] for c in range(D)]) + v * bias[o][:, None]
        y_code = (v * x_code[0]).T
        # --- the same operator in the paper's form (Eq. 10.10) ---
        perm = np.concatenate([np.arange(order * D, P)] + [np.arange(i * D, (i + 1) * D) for i in range(order - 1, -1, -1)])
        delta = np.zeros((1, L, D))
        delta[0, 0] = 1.0
        filters = np.concatenate([delta, k.transpose(0, 2, 1)])
        skip = np.concatenate([np.zeros((1, D)), bias])
        y = mixing.hyena_operator(u, W_lin.T[:, perm], filters, b_in=b_lin[perm], short_filter=w_conv[perm, 0, ::-1].T,
                                  short_bias=b_conv[perm], skip=skip)
        close(y, y_code, rtol=ORACLE, what="hyena_operator vs whole safari operator transcription")

    def test_definition_3_1_written_out(self):
        u, w_in, _, filters = hyena_inputs(41)
        y, v, x = mixing.hyena_operator(u, w_in, filters, return_projections=True)
        z = v
        for n in range(2):  # z^{n+1}_t = x^n_t (h^n * z^n)_t with numpy.convolve
            conv = np.stack([[np.convolve(z[b, :, c], filters[n][:, c])[:24] for c in range(3)] for b in range(2)])
            z = x[n] * conv.transpose(0, 2, 1)
        close(y, z, rtol=ORACLE, what="hyena_operator vs Def. 3.1 with numpy.convolve")

    @pytest.mark.parametrize("order", [2, 3])
    def test_reference_code_runs_one_fewer_convolution(self, order):
        """safari order o == the paper's order o with h^1 = δ, gates reversed, skip folded into h_0."""
        rng = np.random.default_rng(50 + order)
        L, D = 20, 3
        v = rng.normal(size=(L, D))
        x_code = rng.normal(size=(order, L, D))
        k = rng.normal(size=(order - 1, L, D))
        bias = rng.normal(size=(order - 1, D))
        delta = np.zeros((1, L, D))
        delta[0, 0] = 1.0
        filters = np.concatenate([delta, k])  # h^1 = δ, h^{n+1} = k_{n−1}
        gates = x_code[::-1]  # x^n = x_{o−n}
        skip = np.concatenate([np.zeros((1, D)), bias])
        y = mixing.hyena_recurrence(v, gates, filters, skip=skip)
        close(y, safari_hyena_forward(v, x_code, k, bias), rtol=ORACLE, what="hyena vs safari forward transcription")
        folded = filters.copy()
        folded[:, 0] += skip  # skip == an extra tap at lag 0
        close(mixing.hyena_recurrence(v, gates, folded), y, rtol=SELF, what="hyena skip folded into h_0")

    def test_order_one_identity_filter_is_a_gate(self):
        rng = np.random.default_rng(60)
        v, x = rng.normal(size=(10, 2)), rng.normal(size=(1, 10, 2))
        delta = np.zeros((1, 10, 2))
        delta[0, 0] = 1.0
        close(mixing.hyena_recurrence(v, x, delta), x[0] * v, rtol=ORACLE, what="order 1, h = δ: pure gate")

    def test_matrix_equals_probing_and_explicit_product(self):
        u, w_in, short, filters = hyena_inputs(70, L=16, order=3, batch=())
        skip = np.random.default_rng(1).normal(size=(3, 3))
        y, v, x = mixing.hyena_operator(u, w_in, filters, short_filter=short, skip=skip, return_projections=True)
        H = mixing.hyena_matrix(x, filters, skip=skip)
        assert H.shape == (3, 16, 16)
        for c in range(3):
            close(H[c] @ v[:, c], y[:, c], rtol=SELF, what="hyena_matrix @ v vs operator")
            probed = materialize(lambda vv: mixing.hyena_recurrence(vv, x[..., c : c + 1], filters[..., c : c + 1],
                                                                     skip=skip[:, c : c + 1]), 16)
            close(H[c], probed, rtol=SELF, what="hyena_matrix vs operator on basis vectors")
            explicit = np.eye(16)
            for n in range(3):
                S = scipy.linalg.toeplitz(filters[n][:, c], np.zeros(16)) + skip[n, c] * np.eye(16)
                explicit = np.diag(x[n][:, c]) @ S @ explicit  # D_x^n S_h^n ⋯
            close(H[c], explicit, rtol=ORACLE, what="hyena_matrix vs product of diag and scipy toeplitz")
            np.testing.assert_array_equal(np.triu(H[c], 1), 0.0)

    def test_matrix_batch(self):
        u, w_in, short, filters = hyena_inputs(71, L=12, batch=(2, 2))
        y, v, x = mixing.hyena_operator(u, w_in, filters, short_filter=short, return_projections=True)
        H = mixing.hyena_matrix(x, filters)
        assert H.shape == (2, 2, 3, 12, 12)
        close(np.einsum("...cij,...jc->...ic", H, v), y, rtol=SELF, what="batched hyena_matrix")

    @settings(max_examples=20)
    @given(seed=st.integers(0, 2**16), frac=st.floats(0.0, 0.99), order=st.integers(1, 3))
    def test_causality(self, seed, frac, order):
        u, w_in, short, filters = hyena_inputs(seed % 1000, L=20, order=order, batch=())
        t = int(frac * 19)
        u2 = u.copy()
        u2[t + 1 :] += 10.0 * np.random.default_rng(seed).normal(size=u2[t + 1 :].shape)
        y, y2 = (mixing.hyena_operator(z, w_in, filters, short_filter=short) for z in (u, u2))
        assert np.max(np.abs(y[: t + 1] - y2[: t + 1])) <= 1e-12 * max(np.max(np.abs(y2)), 1.0)

    def test_data_controlled(self):
        u, w_in, short, filters = hyena_inputs(80, batch=())
        _, _, x1 = mixing.hyena_operator(u, w_in, filters, return_projections=True)
        _, _, x2 = mixing.hyena_operator(u + 1.0, w_in, filters, return_projections=True)
        H1, H2 = mixing.hyena_matrix(x1, filters), mixing.hyena_matrix(x2, filters)
        assert np.max(np.abs(H1 - H2)) > 1e-3 * np.max(np.abs(H1))  # the matrix depends on the input

    def test_bad_input(self):
        u, w_in, short, filters = hyena_inputs(90, batch=())
        v, x = np.ones((24, 3)), np.ones((2, 24, 3))
        with pytest.raises(ValueError, match="^u"):
            mixing.hyena_operator(np.ones(24), w_in, filters)
        with pytest.raises(ValueError, match="^w_in"):
            mixing.hyena_operator(u, w_in[:, :6], filters)
        with pytest.raises(ValueError, match="^filters"):
            mixing.hyena_operator(u, w_in, filters[0])
        with pytest.raises(ValueError, match="^filters"):
            mixing.hyena_operator_loop(u, w_in, np.ones((0, 24, 3)))
        with pytest.raises(ValueError, match="^short_filter"):
            mixing.hyena_operator(u, w_in, filters, short_filter=np.ones((3, 5)))
        with pytest.raises(ValueError, match="^b_in"):
            mixing.hyena_operator(u, w_in, filters, b_in=np.ones(8))
        with pytest.raises(ValueError, match="^short_bias"):
            mixing.hyena_operator_loop(u, w_in, filters, short_bias=np.ones((9, 1)))
        with pytest.raises(ValueError, match="^x"):
            mixing.hyena_recurrence(v, np.ones((3, 24, 3)), filters)  # order mismatch
        with pytest.raises(ValueError, match="^x"):
            mixing.hyena_recurrence_loop(v, np.ones((2, 20, 3)), filters)  # length mismatch
        with pytest.raises(ValueError, match="^filters"):
            mixing.hyena_recurrence(v, x, np.ones((2, 24, 2)))  # channel mismatch
        with pytest.raises(ValueError, match="^skip"):
            mixing.hyena_recurrence(v, x, filters, skip=np.ones(3))
        with pytest.raises(ValueError, match="^v"):
            mixing.hyena_recurrence(np.ones(24), x, filters)
        with pytest.raises(ValueError, match="^x"):
            mixing.hyena_matrix(np.ones((24, 3)), filters)
        with pytest.raises(ValueError, match="^x"):
            mixing.hyena_matrix(np.ones((1, 24, 3)), filters)
        with pytest.raises(ValueError, match="^u"):
            mixing.hyena_operator(np.full((24, 3), np.inf), w_in, filters)


def test_fft_conv_refuses_a_non_representable_result():
    """fft_conv of u = 1e307 gave NaN (its FFT overflows) while the direct sum is 1e307: refused now."""
    with pytest.raises(ValueError, match=r"^u \(\|u\| from 1e\+307.*not representable"):
        mixing.fft_conv(np.full((64, 1), 1e307), [[1.0]])
    assert mixing.fft_conv_loop(np.full((64, 1), 1e307), [[1.0]])[0, 0] == 1e307
