"""Tests of :mod:`refimpl.focus`: the Focus layer's adaptive IIR filtering, hypernetwork, attention, gates, EMA.

The spec's test plan (``spec/focus.md`` §12), item by item. Oracles, each independent of the code
under test:

* ``scipy.signal``: ``freqz`` (the P-5 grid), ``lfilter`` (per-bin recursion, steady state on a
  tiled bin, reversed for the anti-causal literal variant, MEGA's EMA components), ``residuez`` /
  ``invresz`` (the bank as one parallel-form IIR), ``impulse`` (the continuous reading);
* closed forms: the periodized response ``Σ ρ_i p_i^m / (1 − p_i^N)``, the biquad impulse
  responses of :func:`refimpl.iir.biquad_impulse_closed_form`, explicit circular
  convolution/correlation sums, ``numpy.roots``;
* ``refimpl.attention.softmax_attention`` on one chunk with a plain causal mask.

Tolerances from :mod:`refimpl._testing` (SELF for loop twins and two algorithms, ORACLE for SciPy
and closed forms), norm-wise relative.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal as ss
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import focus as fo
from refimpl import iir
from refimpl._testing import ORACLE, SELF
from refimpl.attention import softmax_attention

from _recording import recorder  # noqa: E402

WORST_ERRORS, close, _ = recorder()


def rand_theta(rng, shape=(), low=0.0, high=1.0):
    return rng.uniform(low, high, size=shape + (2,))


def bins_of(x, n_bins):
    L = x.shape[-2]
    R = L // n_bins
    return [(r * R, (r + 1) * R) for r in range(n_bins)]


def hp_closed(t0, t1, n):
    """Closed-form periodized response Σ_i ρ_i p_i^m / (1 − p_i^N) (distinct poles)."""
    p = np.roots([1.0, t0, t1]).astype(complex)
    rho = p / (p - p[::-1])
    m = np.arange(n)
    return np.real(sum(rho[i] * p[i] ** m / (1 - p[i] ** n) for i in range(2)))


def steady_state(t0, t1, xs, periods=400):
    """Periodic steady state of lfilter([1], [1, θ0, θ1]) on a tiled bin."""
    return ss.lfilter([1.0], [1.0, t0, t1], np.tile(xs, periods))[-xs.size :]


# ---------------------------------------------------------------------------------------------
# 1-2. P-5 grid and the periodized impulse response
# ---------------------------------------------------------------------------------------------


class TestFocusFrequencyResponse:
    @pytest.mark.parametrize("n_fft", [1, 2, 7, 16, 33])
    def test_vs_freqz(self, n_fft):
        rng = np.random.default_rng(n_fft)
        th = rand_theta(rng, (5,))
        H = fo.focus_frequency_response(th, n_fft)
        for i in range(5):
            _, ref = ss.freqz([1.0], [1.0, *th[i]], worN=n_fft, whole=True)
            close(H[i], ref, rtol=ORACLE, what="P-5 grid vs freqz")

    def test_loop(self):
        th = rand_theta(np.random.default_rng(1), (3, 2))
        close(fo.focus_frequency_response_loop(th, 12), fo.focus_frequency_response(th, 12), rtol=SELF, what="P-5 loop")

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^theta"):
            fo.focus_frequency_response([0.5], 8)
        with pytest.raises(ValueError, match="^theta"):
            fo.focus_frequency_response([2.5, 0.5], 8)  # outside the triangle
        with pytest.raises(ValueError, match="^theta"):
            fo.focus_frequency_response([np.nan, 0.5], 8)
        with pytest.raises(ValueError, match="^n_fft"):
            fo.focus_frequency_response([0.5, 0.5], 0)
        with pytest.raises(TypeError, match="^n_fft"):
            fo.focus_frequency_response([0.5, 0.5], 8.0)


class TestPeriodizedImpulseResponse:
    @pytest.mark.parametrize("n", [5, 16, 31])
    def test_closed_form_and_dft(self, n):
        rng = np.random.default_rng(n)
        for _ in range(10):
            t0, t1 = rand_theta(rng)
            if abs(t0 * t0 - 4 * t1) < 1e-3:  # the residue route cancels near a double pole (spec §10)
                continue
            hp = fo.periodized_impulse_response([t0, t1], n)
            close(hp, hp_closed(t0, t1, n), rtol=ORACLE, what="h_p vs closed form")
            close(np.fft.fft(hp_closed(t0, t1, n)), fo.focus_frequency_response([t0, t1], n), rtol=ORACLE, what="DFT(h_p) = H")

    def test_folded_long_impulse_response(self):
        rng = np.random.default_rng(3)
        n = 12
        for t0, t1 in [(0.3, 0.2), (0.9, 0.95), (0.99, 0.01), (0.5, 0.0625)]:  # the last: double pole
            h = ss.lfilter([1.0], [1.0, t0, t1], ss.unit_impulse(n * 4000))
            folded = h.reshape(-1, n).sum(axis=0)  # h_p[m] = Σ_q h[m + qN]
            close(fo.periodized_impulse_response([t0, t1], n), folded, rtol=ORACLE, what="h_p vs folded lfilter")
        assert rng is not None


# ---------------------------------------------------------------------------------------------
# 3-5, 8. The three variants
# ---------------------------------------------------------------------------------------------


class TestAdaptiveFilter:
    @pytest.mark.parametrize("variant", fo.VARIANTS)
    @pytest.mark.parametrize("F", [1, 3])
    def test_loop(self, variant, F):
        rng = np.random.default_rng(F)
        x = rng.normal(size=(2, 40, 3))
        th = rand_theta(rng, (5, 3, F))
        close(fo.adaptive_filter_loop(x, th, variant=variant), fo.adaptive_filter(x, th, variant=variant), rtol=SELF, what=f"adaptive_filter loop ({variant})")

    @pytest.mark.parametrize("variant", ["literal", "causal-circular"])
    def test_loop_zero_padded(self, variant):
        rng = np.random.default_rng(5)
        x = rng.normal(size=(24, 2))
        th = rand_theta(rng, (3, 2, 2))
        close(fo.adaptive_filter_loop(x, th, variant=variant, n_fft=13), fo.adaptive_filter(x, th, variant=variant, n_fft=13), rtol=SELF, what="adaptive_filter loop (n_fft > R)")

    def test_recursive_is_lfilter(self):
        rng = np.random.default_rng(7)
        x = rng.normal(size=(3, 96, 4))
        th = rand_theta(rng, (3, 12, 4, 2))  # per-batch coefficients, F = 2
        y = fo.adaptive_filter(x, th, variant="causal-recursive")
        ref = np.zeros_like(x)
        for b in range(3):
            for r, (s, e) in enumerate(bins_of(x, 12)):
                for c in range(4):
                    for ell in range(2):
                        ref[b, s:e, c] += ss.lfilter([1.0], [1.0, *th[b, r, c, ell]], x[b, s:e, c])
        close(y, ref, rtol=ORACLE, what="causal-recursive vs lfilter per bin")

    def test_recursive_near_marginal_and_double_pole(self):
        x = np.random.default_rng(8).normal(size=(64, 3))
        th = np.array([[[[1 - 1e-5, 1e-6]], [[0.9, 1 - 1e-5]], [[0.6, 0.09]]]] * 2)  # (2 bins, 3 ch, 1, 2)
        y = fo.adaptive_filter(x, th, variant="causal-recursive")
        for r, (s, e) in enumerate(bins_of(x, 2)):
            for c in range(3):
                ref = ss.lfilter([1.0], [1.0, *th[r, c, 0]], x[s:e, c])
                close(y[s:e, c], ref, rtol=ORACLE, what="causal-recursive near-marginal/double pole vs lfilter")

    def test_impulse_closed_forms(self):
        """Item 8: the recursion on δ equals the closed forms for real, complex and double poles."""
        R = 50
        delta = np.zeros((R, 1))
        delta[0] = 1.0
        for th in [(0.9, 0.1), (0.4, 0.8), (0.5, 0.0625)]:  # distinct real, complex, exact double
            y = fo.adaptive_filter(delta, np.array(th).reshape(1, 1, 1, 2))[:, 0]
            close(y, iir.biquad_impulse_closed_form([1, 0, 0], [1, *th], R), rtol=ORACLE, what="impulse vs closed form")

    def test_circular_identities(self):
        """Item 3: FFT·H = circular convolution with h_p = periodic steady state of lfilter."""
        rng = np.random.default_rng(9)
        N = 16
        for _ in range(4):
            xs = rng.normal(size=N)
            t0, t1 = rand_theta(rng, (), 0.05, 0.9)
            y = fo.adaptive_filter(xs[:, None], np.array([[[[t0, t1]]]]), variant="causal-circular")[:, 0]
            hp = fo.periodized_impulse_response([t0, t1], N)
            conv = np.array([sum(hp[m] * xs[(n - m) % N] for m in range(N)) for n in range(N)])
            close(y, conv, rtol=ORACLE, what="causal-circular = circular convolution with h_p")
            close(y, steady_state(t0, t1, xs), rtol=ORACLE, what="causal-circular = steady-state lfilter")

    def test_literal_identities(self):
        """Item 4: FFT·conj(H) = circular cross-correlation = reversed steady-state lfilter; imag ≈ 0."""
        rng = np.random.default_rng(10)
        N = 16
        for _ in range(4):
            xs = rng.normal(size=N)
            t0, t1 = rand_theta(rng, (), 0.05, 0.9)
            y = fo.adaptive_filter(xs[:, None], np.array([[[[t0, t1]]]]), variant="literal")[:, 0]
            hp = fo.periodized_impulse_response([t0, t1], N)
            corr = np.array([sum(hp[m] * xs[(n + m) % N] for m in range(N)) for n in range(N)])
            close(y, corr, rtol=ORACLE, what="literal = circular cross-correlation with h_p")
            close(y, steady_state(t0, t1, xs[::-1])[::-1], rtol=ORACLE, what="literal = reversed steady-state lfilter")
            full = np.fft.ifft(np.fft.fft(xs) * np.conj(fo.focus_frequency_response([t0, t1], N)))
            assert np.abs(full.imag).max() < 1e-13 * np.abs(full.real).max()

    def test_zero_padded_first_r_samples(self):
        rng = np.random.default_rng(11)
        xs = rng.normal(size=10)
        t0, t1 = 0.5, 0.3
        for variant, conj in (("literal", True), ("causal-circular", False)):
            y = fo.adaptive_filter(xs[:, None], np.array([[[[t0, t1]]]]), variant=variant, n_fft=32)[:, 0]
            H = fo.focus_frequency_response([t0, t1], 32)
            ref = np.fft.ifft(np.fft.fft(xs, 32) * (np.conj(H) if conj else H))[:10].real
            close(y, ref, rtol=ORACLE, what="n_fft > R keeps the first R samples")

    def test_bank(self):
        """Item 5: the F-sum equals the sum of single filters and one parallel-form IIR (invresz)."""
        rng = np.random.default_rng(12)
        x = rng.normal(size=(32, 1))
        th = rand_theta(rng, (1, 1, 3), 0.05, 0.95)
        for variant in fo.VARIANTS:
            y = fo.adaptive_filter(x, th, variant=variant)
            parts = sum(fo.adaptive_filter(x, th[:, :, [ell]], variant=variant) for ell in range(3))
            close(y, parts, rtol=ORACLE, what="bank = sum of branches")
        r, p = [], []
        for ell in range(3):
            ri, pi, _ = ss.residuez([1.0], [1.0, *th[0, 0, ell]])
            r.extend(ri)
            p.extend(pi)
        b, a = ss.invresz(r, p, [])
        ref = ss.lfilter(np.real(b), np.real(a), x[:, 0])
        close(fo.adaptive_filter(x, th)[:, 0], ref, rtol=ORACLE, what="bank = parallel-form lfilter (invresz)")

    def test_edge_bins(self):
        rng = np.random.default_rng(13)
        x = rng.normal(size=(8, 2))
        th = rand_theta(rng, (8, 2, 2))  # R = 1
        close(fo.adaptive_filter(x, th), 2 * x, rtol=ORACLE, what="R = 1 recursive is the bank size times x")
        H0 = (1.0 / (1.0 + th.sum(-1))).sum(-1)  # H(f=0) summed over the bank
        close(fo.adaptive_filter(x, th, variant="causal-circular"), H0 * x, rtol=ORACLE, what="R = 1 circular is H(0) x")
        th1 = rand_theta(rng, (1, 2, 1))
        y = fo.adaptive_filter(x, th1)
        close(y[:, 0], ss.lfilter([1.0], [1.0, *th1[0, 0, 0]], x[:, 0]), rtol=ORACLE, what="one bin is lfilter")

    @settings(max_examples=40)
    @given(st.integers(0, 47), st.sampled_from(fo.VARIANTS))
    def test_causality_per_variant(self, t, variant):
        """Recursive: x_f[:t] never changes; FFT variants: changes stay in t's bin and reach its start."""
        rng = np.random.default_rng(14)
        x = rng.normal(size=(48, 2))
        th = rand_theta(rng, (6, 2, 2))  # R = 8
        y = fo.adaptive_filter(x, th, variant=variant)
        x2 = x.copy()
        x2[t] += 1.0
        d = np.abs(fo.adaptive_filter(x2, th, variant=variant) - y).max(-1)
        changed = np.flatnonzero(d > 1e-12 * d.max())
        start, stop = (t // 8) * 8, (t // 8 + 1) * 8
        if variant == "causal-recursive":
            assert changed.min() == t and changed.max() < stop
        else:
            assert changed.min() == start and changed.max() == stop - 1  # the whole bin, nothing outside
        assert np.all(d[:start] <= 1e-13) and np.all(d[stop:] <= 1e-13)

    def test_bad_input(self):
        x = np.zeros((16, 2))
        th = np.full((4, 2, 1, 2), 0.5)
        with pytest.raises(ValueError, match="^variant"):
            fo.adaptive_filter(x, th, variant="causal")
        with pytest.raises(TypeError, match="^variant"):
            fo.adaptive_filter(x, th, variant=1)
        with pytest.raises(ValueError, match="^x"):
            fo.adaptive_filter(np.zeros(16), th)
        with pytest.raises(ValueError, match="^x"):
            fo.adaptive_filter(np.full((16, 2), np.inf), th)
        with pytest.raises(ValueError, match="^theta"):
            fo.adaptive_filter(x, np.full((4, 2, 2), 0.5))  # rank
        with pytest.raises(ValueError, match="^theta"):
            fo.adaptive_filter(x, np.full((4, 3, 1, 2), 0.5))  # D
        with pytest.raises(ValueError, match="^theta"):
            fo.adaptive_filter(x, np.full((5, 2, 1, 2), 0.5))  # bins do not divide L
        with pytest.raises(ValueError, match="^theta"):
            fo.adaptive_filter(x, np.full((0, 2, 1, 2), 0.5))
        bad = th.copy()
        bad[1, 0, 0] = [0.5, 1.0]  # a pole on the unit circle
        with pytest.raises(ValueError, match="^theta: expected stable"):
            fo.adaptive_filter(x, bad)
        bad[1, 0, 0] = [np.nan, 0.1]
        with pytest.raises(ValueError, match="^theta"):
            fo.adaptive_filter(x, bad)
        with pytest.raises(ValueError, match="^theta"):
            fo.adaptive_filter(np.zeros((3, 16, 2)), np.full((2, 4, 2, 1, 2), 0.5))  # batch mismatch
        with pytest.raises(ValueError, match="^n_fft"):
            fo.adaptive_filter(x, th, variant="literal", n_fft=3)  # < R
        with pytest.raises(ValueError, match="^n_fft"):
            fo.adaptive_filter(x, th, variant="causal-recursive", n_fft=8)
        with pytest.raises(TypeError, match="^n_fft"):
            fo.adaptive_filter(x, th, variant="literal", n_fft=8.0)


# ---------------------------------------------------------------------------------------------
# 6-7. Stability, reachable region, gains; the continuous reading
# ---------------------------------------------------------------------------------------------


class TestStability:
    @settings(max_examples=300)
    @given(st.floats(1e-9, 1 - 1e-9), st.floats(1e-9, 1 - 1e-9))
    def test_every_sigmoid_output_is_stable(self, t0, t1):
        p = np.roots([1.0, t0, t1])
        assert np.abs(p).max() < 1.0
        assert iir.in_stability_triangle([1.0, t0, t1])
        if np.all(np.abs(p.imag) == 0):  # real poles: both negative
            assert np.all(p.real < 0)
        else:  # complex: |p| = sqrt(θ1), resonance in (1/4, 1/2) cycles/sample
            assert math.isclose(abs(p[0]), math.sqrt(t1), rel_tol=1e-12)
            f0 = abs(np.angle(p[0])) / (2 * np.pi)
            assert 0.25 < f0 < 0.5

    @settings(max_examples=100)
    @given(st.floats(1e-6, 1 - 1e-6), st.floats(1e-6, 1 - 1e-6))
    def test_gains(self, t0, t1):
        H = fo.focus_frequency_response([t0, t1], 64)
        assert np.abs(H).min() > 1.0 / 3.0
        assert math.isclose(abs(H[0]), 1.0 / (1.0 + t0 + t1), rel_tol=1e-13)  # DC
        assert math.isclose(abs(H[32]), 1.0 / (1.0 - t0 + t1), rel_tol=1e-12)  # Nyquist

    @settings(max_examples=200)
    @given(st.floats(1e-3, 1 - 1e-3), st.floats(1e-3, 1 - 1e-3))
    def test_peak_of_H_is_not_the_pole_angle(self, t0, t1):
        """|H| peaks at cos ω = −θ0(1+θ1)/(4θ1) if that is > −1, else at Nyquist; at or above the pole angle."""
        c = -t0 * (1 + t1) / (4 * t1)
        w_pk = math.acos(max(c, -1.0))
        h_pk = 1 / abs(1 + t0 * np.exp(-1j * w_pk) + t1 * np.exp(-2j * w_pk))
        H = np.abs(fo.focus_frequency_response([t0, t1], 2048))
        assert h_pk >= H.max() * (1 - 1e-12)  # no grid frequency beats the closed-form peak
        k = round(w_pk / (2 * np.pi) * 2048)  # and the grid's peak sits next to it
        assert H.max() <= max(H[(k + j) % 2048] for j in (-1, 0, 1)) * (1 + 1e-12)  # |A|² is unimodal in ω ∈ [0, π]
        p = np.roots([1.0, t0, t1])
        if t0 * t0 >= 4 * t1:  # real poles: always Nyquist
            assert c <= -1.0
        else:
            assert w_pk >= abs(np.angle(p[0])) - 1e-12

    def test_sharp_peaks_need_marginal_poles(self):
        H = fo.focus_frequency_response([1 - 1e-5, 1e-6], 1024)
        assert 9.0e4 < np.abs(H).max() < 9.2e4  # ≈ 9.1e4 at f = 1/2 (spec §2.2)
        t0, t1 = 0.9, 1 - 1e-5
        f0 = math.acos(-t0 / (2 * math.sqrt(t1))) / (2 * math.pi)  # pole angle of r e^{±i2πf0}
        w = 2 * np.pi * np.linspace(f0 - 1e-5, f0 + 1e-5, 2001)
        _, H = iir.frequency_response([1.0], [1.0, t0, t1], w)
        peak = 1.0 / ((1 - math.sqrt(t1)) * 2 * math.sin(2 * math.pi * f0))  # 1/((1 − r)|1 − e^{2iω0}|)
        assert abs(np.abs(H).max() / peak - 1) < 1e-3 and 0.32 < f0 < 0.33  # ≈ 1.1e5, not spec's 2.3e3


class TestContinuousReading:
    def test_exponents_are_reciprocal_poles(self):
        rng = np.random.default_rng(20)
        th = rand_theta(rng, (50,), 0.01, 0.99)
        lam = fo.continuous_exponents(th)
        p = iir.biquad_poles(np.concatenate([np.ones((50, 1)), th], axis=1))
        close(np.sort_complex(lam), np.sort_complex(1.0 / p), rtol=ORACLE, what="λ = 1/p")
        assert np.all(lam.real < 0)  # the paper's Re λ < 0 holds ...
        assert np.all(p.real < 0)  # ... which is Re p < 0, not |p| < 1

    @pytest.mark.parametrize("theta", [(0.9, 0.1), (0.3, 0.6), (0.6, 0.09)])  # over-, under-, critically damped
    def test_impulse_vs_scipy(self, theta):
        b, a = theta
        t = np.linspace(0.0, 20.0, 201)
        _, ref = ss.impulse(([1.0], [a, b, 1.0]), T=t)
        close(fo.continuous_impulse_response(theta, t), ref, rtol=1e-10, what="continuous impulse vs scipy.signal.impulse")

    @pytest.mark.parametrize("theta", [(0.95, 0.01), (0.99, 0.002), (0.9, 1e-8)])
    def test_over_damped_long_window(self, theta):
        """Strongly over-damped (small a): st passes 710 within the window, the response is ~e^{λ₂t}, tiny but
        representable; the two-exponential form (14.6) with numpy.roots exponents, for t where it does not cancel."""
        b, a = theta
        t = np.linspace(0.0, 40.0, 161)
        h = fo.continuous_impulse_response(theta, t)
        l1, l2 = np.sort(np.roots([a, b, 1.0]).real)  # λ1 < λ2 < 0
        far = t >= 0.5  # e^{λ1 t} < 1e-16 · e^{λ2 t} there: no cancellation in the oracle
        ref = (np.exp(l1 * t[far]) - np.exp(l2 * t[far])) / (a * (l1 - l2))
        close(h[far], ref, rtol=1e-12, what="over-damped continuous response, long window")
        assert np.all(np.isfinite(h)) and np.all(h[1:] > 0) and h[0] == 0.0

    def test_paper_omega_is_imaginary(self):
        """Erratum 2: ω = sqrt(Δ)/(2a) is NaN for the under-damped case; sqrt(−Δ)/(2a) matches impulse."""
        b, a = 0.3, 0.6
        with np.errstate(invalid="ignore"):
            assert np.isnan(np.sqrt(b * b - 4 * a))

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^theta"):
            fo.continuous_exponents([0.5, 0.0])
        with pytest.raises(ValueError, match="^theta"):
            fo.continuous_impulse_response([0.5, -0.2], [0.0, 1.0])
        with pytest.raises(ValueError, match="^theta"):
            fo.continuous_impulse_response([[0.5, 0.2]], [0.0, 1.0])
        with pytest.raises(ValueError, match="^t"):
            fo.continuous_impulse_response([0.5, 0.2], [[0.0]])


# ---------------------------------------------------------------------------------------------
# 10. Hypernetwork
# ---------------------------------------------------------------------------------------------


class TestGlobalConv:
    def test_loop_and_fftconvolve(self):
        rng = np.random.default_rng(30)
        x = rng.normal(size=(2, 30, 3))
        k = rng.normal(size=(7, 3))
        skip = rng.normal(size=3)
        y = fo.global_conv(x, k, skip, squash=0.3)
        close(fo.global_conv_loop(x, k, skip, squash=0.3), y, rtol=SELF, what="global_conv loop")
        ks = np.sign(k) * np.maximum(np.abs(k) - 0.3, 0)
        ref = np.stack([np.stack([ss.fftconvolve(x[b, :, c], ks[:, c])[:30] for c in range(3)], -1) for b in range(2)]) + skip * x
        close(y, ref, rtol=ORACLE, what="global_conv vs fftconvolve")
        long_k = rng.normal(size=(50, 3))  # taps beyond L cannot reach the output
        close(fo.global_conv(x, long_k, skip), fo.global_conv(x, long_k[:30], skip), rtol=ORACLE, what="kernel longer than L")

    def test_bad_input(self):
        x = np.zeros((10, 2))
        with pytest.raises(ValueError, match="^kernel"):
            fo.global_conv(x, np.zeros((4, 3)), np.zeros(2))
        with pytest.raises(ValueError, match="^kernel"):
            fo.global_conv(x, np.zeros(4), np.zeros(2))
        with pytest.raises(ValueError, match="^skip"):
            fo.global_conv(x, np.zeros((4, 2)), np.zeros(3))
        with pytest.raises(ValueError, match="^squash"):
            fo.global_conv(x, np.zeros((4, 2)), np.zeros(2), squash=-1.0)


class TestAdaptiveMaxPool:
    @pytest.mark.parametrize("L,P", [(12, 4), (10, 3), (7, 7), (9, 1), (13, 5)])
    def test_windows(self, L, P):
        rng = np.random.default_rng(L * P)
        g = rng.normal(size=(2, L, 3))
        out = fo.adaptive_max_pool(g, P)
        close(out, fo.adaptive_max_pool_loop(g, P), rtol=0, what="adaptive_max_pool loop")
        for i in range(P):  # PyTorch's windows [⌊iL/P⌋, ⌈(i+1)L/P⌉)
            s, e = (i * L) // P, math.ceil((i + 1) * L / P)
            np.testing.assert_array_equal(out[:, i], g[:, s:e].max(axis=1))

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^n_out"):
            fo.adaptive_max_pool(np.zeros((4, 1)), 5)
        with pytest.raises(ValueError, match="^n_out"):
            fo.adaptive_max_pool(np.zeros((4, 1)), 0)
        with pytest.raises(ValueError, match="^g"):
            fo.adaptive_max_pool(np.zeros(4), 2)


class TestHypernetwork:
    def setup_method(self):
        self.p = fo.init_focus_params(3, n_bank=2, oversample=2, hidden=5, kernel_len=9, rng=40)
        self.x = np.random.default_rng(41).normal(size=(2, 48, 3))

    @pytest.mark.parametrize("first_bin", fo.FIRST_BIN)
    def test_loop_range_shift(self, first_bin):
        th = fo.hypernetwork(self.x, self.p, n_bins=6, first_bin=first_bin)
        close(fo.hypernetwork_loop(self.x, self.p, n_bins=6, first_bin=first_bin), th, rtol=SELF, what="hypernetwork loop")
        assert th.shape == (2, 6, 3, 2, 2)
        raw = fo.hypernetwork(self.x, self.p, n_bins=6, shift=False)
        assert np.all((raw > 0) & (raw < 1))
        np.testing.assert_array_equal(th[:, 1:], raw[:, :-1])  # bin r uses bin r − 1's output
        if first_bin == "zero":
            assert np.all(th[:, 0] == 0)
        else:
            h1 = 1 / (1 + np.exp(-self.p["mlp_b1"]))
            ref = 1 / (1 + np.exp(-(h1 @ self.p["mlp_w2"] + self.p["mlp_b2"])))
            close(th[0, 0, 1].ravel(), ref, rtol=ORACLE, what="bin 0 = MLP(0)")

    @settings(max_examples=25)
    @given(st.integers(0, 47))
    def test_causality(self, t):
        """Perturbing x[t] leaves Θ' of bins ≤ ⌊t/R⌋ unchanged (R = 8) and changes a later bin's."""
        th = fo.hypernetwork(self.x, self.p, n_bins=6)
        x2 = self.x.copy()
        x2[:, t] += 3.0
        th2 = fo.hypernetwork(x2, self.p, n_bins=6)
        r = t // 8
        # the FFT convolution spreads round-off (~1e-16) everywhere; the causal dependence is O(1)
        assert np.abs(th2[:, : r + 1] - th[:, : r + 1]).max() <= 1e-14
        if r + 1 < 6:
            assert np.any(th2[:, r + 1 :] != th[:, r + 1 :])
        # nor do bins after (t + K − 1)//R + 1 (K = 9 taps): the taps end in bin (t + K − 1)//R
        b1 = (t + 9 - 1) // 8 + 1
        assert np.abs(th2[:, b1 + 1 :] - th[:, b1 + 1 :]).max(initial=0.0) <= 1e-14

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^n_bins"):
            fo.hypernetwork(self.x, self.p, n_bins=5)
        with pytest.raises(ValueError, match="^n_bins"):
            fo.hypernetwork(self.x, self.p, n_bins=48)  # 48 · O = 96 does not divide 48
        with pytest.raises(ValueError, match="^first_bin"):
            fo.hypernetwork(self.x, self.p, n_bins=6, first_bin="learned")
        with pytest.raises(TypeError, match="^params"):
            fo.hypernetwork(self.x, [1, 2], n_bins=6)
        with pytest.raises(ValueError, match="^params: missing"):
            fo.hypernetwork(self.x, {k: v for k, v in self.p.items() if k != "mlp_w1"}, n_bins=6)
        bad = dict(self.p, mlp_w1=np.zeros((2, 4)))  # hidden width disagrees with mlp_b1
        with pytest.raises(ValueError, match=r"^params\['mlp_b1'\]"):
            fo.hypernetwork(self.x, bad, n_bins=6)
        bad = dict(self.p, conv_kernel=np.zeros((9, 4)))
        with pytest.raises(ValueError, match=r"^params\['conv_skip'\]"):  # D is read off conv_kernel
            fo.hypernetwork(self.x, bad, n_bins=6)
        bad = dict(self.p, mlp_w2=np.zeros((5, 3)), mlp_b2=np.zeros(3))
        with pytest.raises(ValueError, match=r"^params\['mlp_w2'\]"):
            fo.hypernetwork(self.x, bad, n_bins=6)
        bad = dict(self.p, conv_squash=np.array(-0.1))
        with pytest.raises(ValueError, match=r"^params\['conv_squash'\]"):
            fo.hypernetwork(self.x, bad, n_bins=6)
        bad = dict(self.p, conv_skip=np.zeros((3, 1)))
        with pytest.raises(ValueError, match=r"^params\['conv_skip'\]"):
            fo.hypernetwork(self.x, bad, n_bins=6)
        bad = dict(self.p, w_q=np.full((3, 3), np.nan))
        with pytest.raises(ValueError, match=r"^params\['w_q'\]"):
            fo.hypernetwork(self.x, bad, n_bins=6)


# ---------------------------------------------------------------------------------------------
# 11-12. Chunked attention and gates
# ---------------------------------------------------------------------------------------------


class TestChunkedAttention:
    def setup_method(self):
        rng = np.random.default_rng(50)
        self.x, self.xf = rng.normal(size=(2, 2, 24, 4))
        self.w = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(4, 5))

    @pytest.mark.parametrize("M", [1, 4, 6, 24])
    def test_loop_and_per_chunk_oracle(self, M):
        y = fo.chunked_attention(self.x, self.xf, *self.w, chunk_size=M)
        close(fo.chunked_attention_loop(self.x, self.xf, *self.w, chunk_size=M), y, rtol=SELF, what="chunked_attention loop")
        wq, wk, wv = self.w
        for i in range(24 // M):
            s = slice(i * M, (i + 1) * M)
            mask = np.tril(np.ones((M, M), bool))
            ref = softmax_attention(self.x[:, s] @ wq, self.xf[:, s] @ wk, self.xf[:, s] @ wv, mask=mask)
            close(y[:, s], ref, rtol=ORACLE, what="chunk = masked softmax attention")
        if M == 1:
            close(y, self.xf @ wv, rtol=ORACLE, what="M = 1 returns the own value")

    @settings(max_examples=30)
    @given(st.integers(0, 23))
    def test_causal_and_chunks_independent(self, t):
        M = 6
        y = fo.chunked_attention(self.x, self.xf, *self.w, chunk_size=M)
        x2, xf2 = self.x.copy(), self.xf.copy()
        x2[:, t] += 1.0
        xf2[:, t] -= 1.0
        y2 = fo.chunked_attention(x2, xf2, *self.w, chunk_size=M)
        changed = np.flatnonzero(np.any(y2 != y, axis=(0, 2)))
        assert changed.min() == t  # nothing before t
        assert changed.max() < (t // M + 1) * M  # nothing in another chunk

    def test_bad_input(self):
        wq, wk, wv = self.w
        with pytest.raises(ValueError, match="^chunk_size"):
            fo.chunked_attention(self.x, self.xf, *self.w, chunk_size=5)
        with pytest.raises(ValueError, match="^chunk_size"):
            fo.chunked_attention(self.x, self.xf, *self.w, chunk_size=0)
        with pytest.raises(TypeError, match="^chunk_size"):
            fo.chunked_attention(self.x, self.xf, *self.w, chunk_size=4.0)
        with pytest.raises(ValueError, match="^x_f"):
            fo.chunked_attention(self.x, self.xf[:, :12], *self.w, chunk_size=4)
        with pytest.raises(ValueError, match="^w_q"):
            fo.chunked_attention(self.x, self.xf, wq[:3], wk, wv, chunk_size=4)
        with pytest.raises(ValueError, match="^w_k"):
            fo.chunked_attention(self.x, self.xf, wq, wk[:, :2], wv, chunk_size=4)
        with pytest.raises(ValueError, match="^w_v"):
            fo.chunked_attention(self.x, self.xf, wq, wk, wv[:2], chunk_size=4)


class TestGatedResidual:
    def setup_method(self):
        rng = np.random.default_rng(60)
        D, dv = 3, 2
        self.x, self.xf = rng.normal(size=(2, 2, 5, D))
        self.y = rng.normal(size=(2, 5, dv))
        self.w = dict(
            w_gamma=rng.normal(size=(D, dv)), b_gamma=rng.normal(size=dv), w_phi=rng.normal(size=(D, D)),
            b_phi=rng.normal(size=D), w_h=rng.normal(size=(D, D)), u_h=rng.normal(size=(dv, D)), b_h=rng.normal(size=D),
        )

    def test_loop(self):
        o = fo.gated_residual(self.x, self.xf, self.y, **self.w)
        close(fo.gated_residual_loop(self.x, self.xf, self.y, **self.w), o, rtol=SELF, what="gated_residual loop")
        close(fo.gated_residual_loop(self.x[0], self.xf, self.y[1], **self.w), fo.gated_residual(self.x[0], self.xf, self.y[1], **self.w), rtol=SELF, what="gated_residual loop (broadcast)")

    def test_gate_limits(self):
        silu = lambda s: s / (1 + np.exp(-s))  # noqa: E731
        closed = dict(self.w, w_phi=np.zeros((3, 3)), b_phi=np.full(3, -800.0))  # φ ≡ 0
        close(fo.gated_residual(self.x, self.xf, self.y, **closed), self.x, rtol=ORACLE, what="φ ≡ 0 gives x")
        opened = dict(self.w, w_phi=np.zeros((3, 3)), b_phi=np.full(3, 800.0))  # φ ≡ 1
        gamma = silu(self.xf @ self.w["w_gamma"] + self.w["b_gamma"])
        z = silu(self.xf @ self.w["w_h"] + (gamma * self.y) @ self.w["u_h"] + self.w["b_h"])
        close(fo.gated_residual(self.x, self.xf, self.y, **opened), z, rtol=ORACLE, what="φ ≡ 1 gives z")

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^w_gamma"):
            fo.gated_residual(self.x, self.xf, self.y, **dict(self.w, w_gamma=np.zeros((3, 3))))
        with pytest.raises(ValueError, match="^u_h"):
            fo.gated_residual(self.x, self.xf, self.y, **dict(self.w, u_h=np.zeros((3, 3))))
        with pytest.raises(ValueError, match="^y"):
            fo.gated_residual(self.x, self.xf, self.y[:, :4], **self.w)
        with pytest.raises(ValueError, match="^y"):
            fo.gated_residual(self.x, self.xf, np.zeros((3, 5, 2)), **self.w)
        with pytest.raises(ValueError, match="^x_f"):
            fo.gated_residual(self.x, self.xf[..., :2], self.y, **self.w)


# ---------------------------------------------------------------------------------------------
# 13. The layer: loop twin, causality of each variant, intermediates
# ---------------------------------------------------------------------------------------------


class TestFocusLayer:
    P = fo.init_focus_params(3, n_bank=2, oversample=2, hidden=4, kernel_len=16, d_head=2, rng=70)
    X = np.random.default_rng(71).normal(size=(48, 3))

    @pytest.mark.parametrize("variant", fo.VARIANTS)
    def test_loop(self, variant):
        x = np.stack([self.X[:24], self.X[24:]])
        o = fo.focus_layer(x, self.P, variant=variant, chunk_size=8, n_bins=6, first_bin="mlp-zero")
        ol = fo.focus_layer_loop(x, self.P, variant=variant, chunk_size=8, n_bins=6, first_bin="mlp-zero")
        close(ol, o, rtol=SELF, what=f"focus_layer loop ({variant})")

    def test_intermediates_compose(self):
        o, mid = fo.focus_layer(self.X, self.P, chunk_size=12, n_bins=6, return_intermediates=True)
        p = self.P
        th = fo.hypernetwork(self.X, p, n_bins=6)
        np.testing.assert_array_equal(mid["theta"], th)
        np.testing.assert_array_equal(mid["x_f"], fo.adaptive_filter(self.X, th))
        np.testing.assert_array_equal(mid["y"], fo.chunked_attention(self.X, mid["x_f"], p["w_q"], p["w_k"], p["w_v"], chunk_size=12))
        assert o.shape == self.X.shape
        # first_bin = "zero": Θ'[0] = 0, every branch of bin 0 is the identity, so x_f = F · x there
        close(mid["x_f"][:8], 2 * self.X[:8], rtol=ORACLE, what="first_bin='zero': bin 0 is F times the identity")

    def _changed(self, variant, t, chunk_size=12, first_bin="mlp-zero"):
        kw = dict(variant=variant, chunk_size=chunk_size, n_bins=6, first_bin=first_bin)  # "mlp-zero": bin 0 filtered too
        o = fo.focus_layer(self.X, self.P, **kw)
        x2 = self.X.copy()
        x2[t] += 1.0
        o2 = fo.focus_layer(x2, self.P, **kw)
        diff = np.abs(o2 - o).max(axis=-1)
        # FFT convolutions spread round-off (~1e-16) to every index; a real dependence is O(1e-3+)
        return np.flatnonzero(diff > 1e-12 * diff.max())

    def _first_change(self, variant, t, chunk_size=12):
        return int(self._changed(variant, t, chunk_size).min())

    @pytest.mark.parametrize("variant", fo.VARIANTS)
    def test_last_change_is_bounded_by_the_reach(self, variant):
        """No output after the end of the chunk holding bin ⌊(t+K−1)/R⌋ + 1 changes (K = 16, R = 8, M = 12)."""
        reach = [min(48, -(-((t + 15) // 8 + 2) * 8 // 12) * 12) - 1 for t in range(48)]
        last = [int(self._changed(variant, t).max()) for t in range(48)]
        over = [(t, l_, r_) for t, (l_, r_) in enumerate(zip(last, reach)) if l_ > r_]
        assert not over, over
        assert sum(l_ == r_ for l_, r_ in zip(last, reach)) >= 24  # and the bound is attained for most t here

    @pytest.mark.parametrize("variant", fo.VARIANTS)
    def test_squashed_taps_shorten_the_reach(self, variant):
        """With a squash λ > 0, x[t] reaches g[t + j] only through a nonzero tap: the reach is that of
        K' = 1 + the last nonzero tap (here λ = max |k[13:]| zeros 85 % of the taps, K' = 11 < K = 16)."""
        k = self.P["conv_kernel"]
        lam = float(np.abs(k[13:]).max())
        K_eff = 1 + int(np.flatnonzero((np.abs(k) > lam).any(axis=1)).max())
        assert K_eff == 11
        reach = [min(48, -(-((t + K_eff - 1) // 8 + 2) * 8 // 12) * 12) - 1 for t in range(48)]
        P_sq = dict(self.P, conv_squash=np.array(lam))
        kw = dict(variant=variant, chunk_size=12, n_bins=6, first_bin="mlp-zero")
        o = fo.focus_layer(self.X, P_sq, **kw)
        last = []
        for t in range(48):
            x2 = self.X.copy()
            x2[t] += 1.0
            d = np.abs(fo.focus_layer(x2, P_sq, **kw) - o).max(axis=-1)
            assert d[reach[t] + 1:].max(initial=0.0) < 1e-13 * d.max(), t  # nothing beyond the reach of K'
            last.append(int(np.flatnonzero(d > 1e-12 * d.max()).max()))
        assert sum(l_ == r_ for l_, r_ in zip(last, reach)) >= 24  # and the bound is attained for most t
        # without the squash the same layer reaches further for some t: the test sees a squash that is not applied
        assert any(int(self._changed(variant, t).max()) > reach[t] for t in range(48))

    @pytest.mark.parametrize("variant", ["causal-circular", "literal"])
    def test_default_first_bin_does_not_leak_in_bin_0(self, variant):
        """first_bin="zero": bin 0's branches are the identity, so only bins ≥ 1 leak back to their start."""
        for t in (0, 3, 7, 8, 13, 45):
            first = int(self._changed(variant, t, first_bin="zero").min())
            assert first == (t if t < 8 else t // 8 * 8), (t, first)

    @settings(max_examples=30)
    @given(st.integers(0, 47), st.sampled_from([1, 4, 12, 48]))
    def test_recursive_is_causal(self, t, M):
        """Variant C: perturbing x[t] never changes o[:t], and changes o[t]."""
        assert self._first_change("causal-recursive", t, M) == t

    @settings(max_examples=30)
    @given(st.integers(0, 47), st.sampled_from(["causal-circular", "literal"]))
    def test_fft_variants_leak_to_bin_start(self, t, variant):
        """Variants A and B leak back exactly to the start of t's bin (R = 8), never further."""
        assert self._first_change(variant, t) == (t // 8) * 8

    def test_zero_padding_is_invisible_to_the_causal_variant(self):
        o = fo.focus_layer(self.X[:44], self.P, chunk_size=4, n_bins=11)
        assert o.shape == (44, 3)
        padded = np.concatenate([self.X[:44], np.zeros((4, 3))])
        o_pad = fo.focus_layer(padded, self.P, chunk_size=4, n_bins=12)
        # same bin length R = 4 and chunk M = 4 in both: the first 44 outputs agree exactly
        np.testing.assert_allclose(o_pad[:44], o, rtol=0, atol=1e-14)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^variant"):
            fo.focus_layer(self.X, self.P, variant="recursive", chunk_size=12, n_bins=6)
        with pytest.raises(ValueError, match="^chunk_size"):
            fo.focus_layer(self.X, self.P, chunk_size=7, n_bins=6)
        with pytest.raises(ValueError, match="^n_bins"):
            fo.focus_layer(self.X, self.P, chunk_size=12, n_bins=18)  # 1K/18 bins: erratum 5
        with pytest.raises(ValueError, match="^n_fft"):
            fo.focus_layer(self.X, self.P, variant="literal", chunk_size=12, n_bins=6, n_fft=4)
        with pytest.raises(ValueError, match=r"^params\['w_h'\]"):
            fo.focus_layer(self.X, dict(self.P, w_h=np.zeros((2, 2))), chunk_size=12, n_bins=6)
        with pytest.raises(ValueError, match="^x"):
            fo.focus_layer(self.X[:, :2], self.P, chunk_size=12, n_bins=6)
        saturated = dict(self.P, mlp_b2=np.array([-900.0, 900.0, 0.0, 0.0]))  # σ(900) == 1.0: a marginal pole
        with pytest.raises(ValueError, match="^theta: expected stable"):
            fo.focus_layer(self.X, saturated, chunk_size=12, n_bins=6)
        with pytest.raises(TypeError, match="^return_intermediates"):
            fo.focus_layer(self.X, self.P, chunk_size=12, n_bins=6, return_intermediates=1)

    def test_saturated_theta0_is_still_stable(self):
        """σ rounds to 1.0 above a pre-activation of about 37: for θ₀ that is no marginal pole while θ₁ > 0."""
        sat0 = dict(self.P, mlp_b2=np.array([900.0, 0.0, 0.0, 0.0]))  # θ0 of branch 0 == 1.0 exactly
        o, mid = fo.focus_layer(self.X, sat0, chunk_size=12, n_bins=6, return_intermediates=True)
        th = mid["theta"][1:, :, 0]
        assert np.all(th[..., 0] == 1.0) and np.all(th[..., 1] > 1e-15) and np.all(np.isfinite(o))
        assert np.abs(iir.biquad_poles(np.concatenate([np.ones(th.shape[:-1] + (1,)), th], -1))).max() < 1.0
        both = dict(self.P, mlp_b2=np.array([900.0, -900.0, 0.0, 0.0]))  # θ0 == 1, θ1 underflows: pole at −1
        with pytest.raises(ValueError, match="^theta: expected stable"):
            fo.focus_layer(self.X, both, chunk_size=12, n_bins=6)


class TestInitFocusParams:
    def test_deterministic_and_shapes(self):
        a = fo.init_focus_params(4, n_bank=3, oversample=5, hidden=7, kernel_len=11, d_head=2, rng=1)
        b = fo.init_focus_params(4, n_bank=3, oversample=5, hidden=7, kernel_len=11, d_head=2, rng=np.random.default_rng(1))
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        assert a["conv_kernel"].shape == (11, 4) and a["mlp_w1"].shape == (5, 7) and a["mlp_w2"].shape == (7, 6)
        assert a["w_q"].shape == (4, 2) and a["w_v"].shape == (4, 4)
        assert np.any(a["w_q"] != fo.init_focus_params(4, d_head=2, rng=2)["w_q"])

    def test_conv_init_is_the_documented_one(self):
        """conv_kernel ~ N(0, 0.02²), conv_skip ~ N(1, 0.1²), conv_squash = 0, as the docstring says."""
        p = fo.init_focus_params(64, kernel_len=256, rng=3)
        k, s = p["conv_kernel"].ravel(), p["conv_skip"]
        assert abs(k.std() / 0.02 - 1) < 0.03 and abs(k.mean()) < 0.02 * 0.03  # 16384 draws: 5+ standard errors
        assert abs(s.mean() - 1) < 0.05 and 0.06 < s.std() < 0.14 and float(p["conv_squash"]) == 0.0
        # λ = 0.1 is 5 σ here: it would zero every one of these taps
        g = fo.global_conv(np.eye(256)[:, :1] * np.ones(64), p["conv_kernel"], np.zeros(64), squash=0.1)
        assert not np.any(g)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^d"):
            fo.init_focus_params(0)
        with pytest.raises(TypeError, match="^n_bank"):
            fo.init_focus_params(2, n_bank=1.5)
        with pytest.raises(ValueError, match="^oversample"):
            fo.init_focus_params(2, oversample=0)
        with pytest.raises(TypeError, match="^rng"):
            fo.init_focus_params(2, rng="seed")


# ---------------------------------------------------------------------------------------------
# 14. Operation counts
# ---------------------------------------------------------------------------------------------


class TestOpCounts:
    def test_identities(self):
        for L, M in [(1024, 32), (4096, 64), (2**16, 128)]:
            c = fo.focus_op_counts(L, 64, n_bins=L // 64, chunk_size=M)
            assert math.isclose(c["total_p27"], c["total_p28"], rel_tol=1e-15)  # C M² = L M
            assert math.isclose(c["chunked_fft"], 64 * L * 6)  # R = 64: log2 R = 6
        # fixed C = 32 chunks (Table 6): the attention term is L² D / 32 — quadratic
        for L in (1024, 8192):
            c = fo.focus_op_counts(L, 64, n_bins=4, chunk_size=L // 32)
            assert math.isclose(c["attention"] - 32 * (L // 32) * 64**2, c["full_attention"] / 32)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^chunk_size"):
            fo.focus_op_counts(100, 4, n_bins=4, chunk_size=3)
        with pytest.raises(ValueError, match="^n_bins"):
            fo.focus_op_counts(100, 4, n_bins=3, chunk_size=4)
        with pytest.raises(ValueError, match="^L"):
            fo.focus_op_counts(0, 4, n_bins=1, chunk_size=1)


# ---------------------------------------------------------------------------------------------
# 15. MEGA's damped EMA
# ---------------------------------------------------------------------------------------------


class TestMegaEMA:
    def setup_method(self):
        rng = np.random.default_rng(80)
        D, h = 3, 2
        self.alpha, self.delta = rng.uniform(0.05, 0.95, (2, D, h))
        self.beta, self.eta = rng.normal(size=(2, D, h))
        self.x = rng.normal(size=(2, 40, D))

    def test_three_ways(self):
        args = (self.alpha, self.delta, self.beta, self.eta)
        y = fo.mega_ema(self.x, *args)
        close(fo.mega_ema_loop(self.x, *args), y, rtol=SELF, what="MEGA EMA: FFT kernel vs recurrence")
        ref = np.zeros_like(self.x)
        for j in range(3):
            for i in range(2):
                a, d = self.alpha[j, i], self.delta[j, i]
                ref[..., j] += ss.lfilter([self.eta[j, i] * a * self.beta[j, i]], [1.0, -(1.0 - a * d)], self.x[..., j], axis=-1)
        close(y, ref, rtol=ORACLE, what="MEGA EMA vs lfilter per component")
        K = fo.mega_ema_kernel(*args, 40)
        delta = np.zeros((40, 3))
        delta[0] = 1.0
        close(fo.mega_ema(delta, *args), K, rtol=ORACLE, what="MEGA EMA impulse response = kernel")

    def test_bad_input(self):
        args = [self.alpha, self.delta, self.beta, self.eta]
        with pytest.raises(ValueError, match="^alpha"):
            fo.mega_ema(self.x, np.ones((3, 2)), *args[1:])
        with pytest.raises(ValueError, match="^delta"):
            fo.mega_ema(self.x, args[0], np.zeros((3, 2)), *args[2:])
        with pytest.raises(ValueError, match="^beta"):
            fo.mega_ema(self.x, *args[:2], np.ones((3, 3)), args[3])
        with pytest.raises(ValueError, match="^x"):
            fo.mega_ema(self.x[..., :2], *args)
        with pytest.raises(ValueError, match="^n"):
            fo.mega_ema_kernel(*args, 0)


class TestBadInputRefusedByName:
    def test_causal_impulse_response_needs_t_nonnegative(self):
        assert np.all(np.isfinite(fo.continuous_impulse_response([0.5, 0.2], np.linspace(0.0, 3.0, 7))))
        with pytest.raises(ValueError, match=r"^t: expected times t >= 0"):
            fo.continuous_impulse_response([0.5, 0.2], [-1.0, 0.0, 1.0])

    def test_empty_signals_and_named_sizes(self):
        with pytest.raises(ValueError, match=r"^x: expected at least one step"):
            fo.adaptive_filter(np.ones((0, 2)), np.full((1, 2, 1, 2), 0.3))
        with pytest.raises(ValueError, match=r"^g: expected at least one step"):
            fo.adaptive_max_pool(np.ones((0, 2)), 1)
        with pytest.raises(ValueError, match=r"^n_out: expected at most L = 2 outputs \(the length of g\)"):
            fo.adaptive_max_pool(np.ones((2, 2)), 3)
        with pytest.raises(TypeError, match=r"^n: expected an integer"):
            fo.periodized_impulse_response([0.5, 0.2], 8.0)
        with pytest.raises(TypeError, match=r"^shift: expected a bool"):
            fo.hypernetwork(np.ones((16, 3)), fo.init_focus_params(3, kernel_len=8, hidden=4, rng=0), n_bins=2,
                            shift="no")


def test_fft_paths_refuse_a_non_representable_result():
    """A finite input whose FFT overflows gave NaN rows with only a warning (an independent tester's
    finding); like every function of the package, the FFT forms now refuse."""
    x = np.full((64, 1), 1e307)  # bins of 32 samples: the DC term 3.2e308 overflows
    with pytest.raises(ValueError, match="not representable"):
        fo.global_conv(x, np.ones((4, 1)), np.zeros(1))
    with pytest.raises(ValueError, match="not representable"):
        fo.adaptive_filter(x, np.full((2, 1, 1, 2), 0.1), variant="causal-circular")


def test_a_bank_of_no_filter_and_empty_batches():
    with pytest.raises(ValueError, match=r"^theta: expected at least one filter per bank"):
        fo.adaptive_filter(np.zeros((8, 2)), np.zeros((2, 2, 0, 2)))  # returned zeros before
    th = np.full((2, 2, 1, 2), 0.1)
    for variant in fo.VARIANTS:
        assert fo.adaptive_filter(np.zeros((0, 8, 2)), th, variant=variant).shape == (0, 8, 2)
    P = fo.init_focus_params(4, rng=0)
    assert fo.focus_layer(np.zeros((0, 24, 4)), P, chunk_size=12, n_bins=6).shape == (0, 24, 4)


def test_nyquist_value_of_the_grid_is_real():
    """exp(−jπ) rounds to −1 − 1.2e-16j; near the stability edge H(−1) = 1/(1 − θ₀ + θ₁) ≈ 1e8 then
    carried an imaginary part of about 1 (relative 1e-8). The grid uses z = −1 exactly."""
    theta = np.array([1 - 1e-8, 1e-9])
    H = fo.focus_frequency_response(theta, 8)
    assert H[4].imag == 0.0 and H[0].imag == 0.0
    assert H[4].real == pytest.approx(1.0 / (1.0 - theta[0] + theta[1]), rel=1e-15)
