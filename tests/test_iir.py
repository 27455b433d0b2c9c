"""Tests of :mod:`refimpl.iir`: classical IIR filtering, design, stability and the SSM mapping.

Oracles, each independent of the code under test (``refimpl.iir`` never calls ``scipy.signal``):

* ``scipy.signal``: ``lfilter`` (with ``zi``), ``sosfilt``, ``freqz``, ``group_delay``, ``freqs``,
  ``tf2zpk``, ``zpk2tf``, ``zpk2sos``, ``buttap``, ``cheb1ap``, ``lp2lp_zpk``, ``lp2hp_zpk``,
  ``lp2bp_zpk``, ``bilinear``, ``bilinear_zpk``, ``butter``, ``cheby1``, ``cont2discrete``,
  ``impulse``, ``residuez``;
* ``numpy.roots`` for pole radii in the stability property test;
* closed forms (impulse responses of distinct real, complex and double poles; the scalar SSM
  recursion written out by hand).

Tolerances come from :mod:`refimpl._testing` (SELF for loop vs vectorized and two algorithms,
ORACLE for SciPy and closed forms), norm-wise relative.
"""

from __future__ import annotations

import os
import time
from decimal import Decimal, localcontext

import numpy as np
import pytest
import scipy.signal as ss
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import iir
from _recording import recorder  # noqa: E402 (tests/ is on sys.path)
from refimpl._testing import ORACLE, SELF, assert_close

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, record = recorder()


def random_biquad(rng, *, radius=(0.2, 0.97), kind=None):
    """A stable biquad (b, a) with poles of the given kind ('complex', 'real') and radius range."""
    kind = kind or rng.choice(["complex", "real"])
    if kind == "complex":
        r, w = rng.uniform(*radius), rng.uniform(0.1, 3.0)
        a = np.array([1.0, -2 * r * np.cos(w), r * r])
    else:
        p1, p2 = rng.uniform(-radius[1], radius[1], 2)
        a = np.array([1.0, -(p1 + p2), p1 * p2])
    return rng.normal(size=3), a


SEEDS = [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Filtering
# ---------------------------------------------------------------------------------------------


class TestBiquadFilter:
    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("shape", [(257,), (3, 130, 4), (2, 1, 64, 3), (5, 1)])
    def test_lfilter_oracle_and_loop(self, seed, shape):
        rng = np.random.default_rng(seed)
        b, a = random_biquad(rng)
        a = a * rng.uniform(0.5, 2.0)  # a[0] != 1 is normalized
        x = rng.normal(size=shape)
        ref = ss.lfilter(b, a, x, axis=-2 if len(shape) > 1 else -1)
        close(iir.biquad_filter(b, a, x), ref, rtol=ORACLE, what="biquad_filter vs lfilter")
        close(iir.biquad_filter_loop(b, a, x), ref, rtol=ORACLE, what="biquad_filter_loop vs lfilter")
        for form in iir.FORMS:
            close(iir.biquad_filter(b, a, x, form=form), iir.biquad_filter_loop(b, a, x, form=form),
                  rtol=SELF, what="biquad_filter loop twin")

    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 300])
    def test_tdf2_state_is_lfilter_zi(self, seed, n):
        rng = np.random.default_rng(seed)
        b, a = random_biquad(rng)
        x = rng.normal(size=(2, n, 3))
        zi = rng.normal(size=(2, 2, 3))
        # SciPy 1.17 returns uninitialized memory as zf for an empty x; the final state of no samples is zi
        yr, zr = ss.lfilter(b, a, x, axis=-2, zi=zi) if n else (x, zi)
        for f in (iir.biquad_filter, iir.biquad_filter_loop):
            y, zf = f(b, a, x, zi)
            close(y, yr, rtol=ORACLE, what="biquad_filter(zi) vs lfilter")
            close(zf, zr, rtol=ORACLE, what="biquad_filter zf vs lfilter")

    @pytest.mark.parametrize("seed", SEEDS)
    def test_df1_state_is_the_history(self, seed):
        """DF-I state [x[−1], x[−2], y[−1], y[−2]]: splitting a signal anywhere gives the same output."""
        rng = np.random.default_rng(seed)
        b, a = random_biquad(rng)
        x = rng.normal(size=(200, 2))
        whole = ss.lfilter(b, a, x, axis=0)
        for f in (iir.biquad_filter, iir.biquad_filter_loop):
            y1, z1 = f(b, a, x[:77], np.zeros((4, 2)), form="df1")
            close(z1, np.stack([x[76], x[75], y1[76], y1[75]]), rtol=0.0, what="df1 final state")
            y2, z2 = f(b, a, x[77:], z1, form="df1")
            close(np.concatenate([y1, y2]), whole, rtol=ORACLE, what="df1 split vs lfilter")
            y3, z3 = f(b, a, x[77:78], z1, form="df1")  # N = 1 reaches into zi for x[−2], y[−2]
            close(z3, np.stack([x[77], x[76], y2[0], y1[76]]), rtol=ORACLE, what="df1 N=1 state")

    def test_df1_and_tdf2_states_agree(self):
        rng = np.random.default_rng(5)
        b, a = random_biquad(rng)
        h = rng.normal(size=4)  # x[−1], x[−2], y[−1], y[−2]
        x = rng.normal(size=50)
        zi = ss.lfiltic(b, a, h[2:], h[:2])  # SciPy's conversion of a history to a TDF-II state
        close(iir.biquad_filter(b, a, x, h, form="df1")[0], ss.lfilter(b, a, x, zi=zi)[0],
              rtol=ORACLE, what="df1 history vs lfiltic")

    def test_unstable_filter_is_allowed_unless_required(self):
        b, a = [1.0, 0.0, 0.0], [1.0, -2.1, 1.1]  # poles 1.1 and 1.0
        x = np.random.default_rng(0).normal(size=40)
        close(iir.biquad_filter(b, a, x), ss.lfilter(b, a, x), rtol=ORACLE, what="unstable biquad vs lfilter")
        with pytest.raises(ValueError, match="^a: expected a stable filter"):
            iir.biquad_filter(b, a, x, require_stable=True)
        with pytest.raises(ValueError, match="^a: expected a stable filter"):
            iir.biquad_filter_loop([1, 0, 0], [1, 0, -1.0], x, require_stable=True)  # poles ±1: marginal

    @pytest.mark.parametrize("n", [4095, 4096, 4097, 70_001])
    @pytest.mark.parametrize("radius", [0.5, 0.999, 1.0])
    def test_long_signals(self, n, radius):
        """Long enough for the block carry to recurse twice (N/K > 256 blocks); lightly damped and
        undamped poles (|p| = 1: nothing decays, so a wrong carry cannot hide)."""
        rng = np.random.default_rng(n)
        b, a = rng.normal(size=3), np.array([1.0, -2 * radius * np.cos(0.05), radius**2])
        x, zi = rng.normal(size=(n, 3)), rng.normal(size=(2, 3))
        yr, zr = ss.lfilter(b, a, x, axis=0, zi=zi)
        y, zf = iir.biquad_filter(b, a, x, zi)
        close(y, yr, rtol=ORACLE * 10, what="long biquad_filter vs lfilter")
        close(zf, zr, rtol=ORACLE * 10, what="long biquad_filter zf vs lfilter")
        if n < 5000:
            close(y, iir.biquad_filter_loop(b, a, x, zi)[0], rtol=SELF, what="long biquad_filter loop twin")

    def test_input_is_neither_modified_nor_aliased(self):
        x = np.random.default_rng(0).normal(size=(300, 2))
        x0 = x.copy()
        for f in (iir.biquad_filter, iir.tf_filter):
            for b, a in (([0.2, 0.3, 0.1], [1.0, -1.6, 0.8]), ([1.0, 0.0, 0.0], [1.0, 0.0, 0.0])):
                y = f(b, a, x)
                assert not np.shares_memory(y, x)
                y[...] = 0.0
        np.testing.assert_array_equal(x, x0)

    @pytest.mark.parametrize("func", [iir.biquad_filter, iir.biquad_filter_loop])
    @pytest.mark.parametrize(
        "args, kwargs, exc, match",
        [
            (([1, 0, 0], [0.0, 1, 0], np.ones(4)), {}, ValueError, "a"),
            (([1, 0], [1, 0, 0], np.ones(4)), {}, ValueError, "b"),
            (([1, 0, 0], [1, 0, 0, 0], np.ones(4)), {}, ValueError, "a"),
            (([1, np.nan, 0], [1, 0, 0], np.ones(4)), {}, ValueError, "b"),
            (([1, 0, 0], [1, np.inf, 0], np.ones(4)), {}, ValueError, "a"),
            (([1, 0, 0], [1, 0, 0], [1.0, np.nan]), {}, ValueError, "x"),
            (([1, 0, 0], [1, 0, 0], 3.0), {}, ValueError, "x"),
            (([1, 0, 0], [1, 0, 0], "abc"), {}, TypeError, "x"),
            (([1, 0, 0], [1, 0, 0], np.ones(4), np.ones(3)), {}, ValueError, "zi"),
            (([1, 0, 0], [1, 0, 0], np.ones((4, 2)), np.ones((2, 3))), {}, ValueError, "zi"),
            (([1, 0, 0], [1, 0, 0], np.ones((4, 2)), np.ones((2, 2))), {"form": "df1"}, ValueError, "zi"),
            (([1, 0, 0], [1, 0, 0], np.ones(4), [0.0, np.inf]), {}, ValueError, "zi"),
            (([1, 0, 0], [1, 0, 0], np.ones(4)), {"form": "df2"}, ValueError, "form"),
            (([1, 0, 0], [1, 0, 0], np.ones(4)), {"form": 1}, TypeError, "form"),
            (([1, 0, 0], [1, 0, 0], np.ones(4)), {"require_stable": "yes"}, TypeError, "require_stable"),
            (([1j, 0, 0], [1, 0, 0], np.ones(4)), {}, TypeError, "b"),
        ],
    )
    def test_errors(self, func, args, kwargs, exc, match):
        with pytest.raises(exc, match=f"^{match}:"):
            func(*args, **kwargs)


class TestTfFilter:
    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("design", [(1, 0.3), (3, 0.2), (4, 0.4), (6, 0.3)])
    def test_lfilter_oracle(self, seed, design):
        rng = np.random.default_rng(seed)
        b, a = ss.butter(*design)
        x = rng.normal(size=(2, 500, 3))
        zi = rng.normal(size=(2, len(a) - 1, 3))
        yr, zr = ss.lfilter(b, a, x, axis=-2, zi=zi)
        for f in (iir.tf_filter, iir.tf_filter_loop):
            y, zf = f(b, a, x, zi)
            close(y, yr, rtol=ORACLE, what="tf_filter vs lfilter")
            close(zf, zr, rtol=ORACLE, what="tf_filter zf vs lfilter")

    @pytest.mark.parametrize("design", [(1, 0.3), (4, 0.2), (6, 0.4)])
    def test_long_signal(self, design):
        """N/K > 256 blocks: the block carry recurses twice (order 6: K = 4q = 24)."""
        rng = np.random.default_rng(len(design))
        b, a = ss.butter(*design)
        x, zi = rng.normal(size=(30_001, 2)), rng.normal(size=(len(a) - 1, 2))
        yr, zr = ss.lfilter(b, a, x, axis=0, zi=zi)
        y, zf = iir.tf_filter(b, a, x, zi)
        close(y, yr, rtol=ORACLE * 10, what="long tf_filter vs lfilter")
        close(zf, zr, rtol=ORACLE * 10, what="long tf_filter zf vs lfilter")

    def test_unequal_lengths_and_gain(self):
        x = np.random.default_rng(1).normal(size=100)
        close(iir.tf_filter([0.5, 0.2, 0.1, 0.05], [1.0, -0.5], x), ss.lfilter([0.5, 0.2, 0.1, 0.05], [1.0, -0.5], x),
              rtol=ORACLE, what="tf_filter FIR-heavy vs lfilter")
        close(iir.tf_filter([3.0], [2.0], x), 1.5 * x, rtol=ORACLE, what="tf_filter gain")
        close(iir.tf_filter_loop([3.0], [2.0], x), 1.5 * x, rtol=ORACLE, what="tf_filter_loop gain")

    def test_high_order_tf_is_ill_conditioned(self):
        """Order 8, narrow band: two float64 sample recursions of the tf form (lfilter, which tf_filter
        runs for it, and the loop twin) disagree by far more than the same filter's SOS forms do."""
        x = np.random.default_rng(2).normal(size=3000)
        b, a = ss.butter(8, 0.05)
        y_tf, y_loop = iir.tf_filter(b, a, x), iir.tf_filter_loop(b, a, x)
        err_tf = np.max(np.abs(y_tf - y_loop)) / np.max(np.abs(y_loop))
        sos = ss.butter(8, 0.05, output="sos")
        y_sos = iir.sos_filter(sos, x)
        err_sos = np.max(np.abs(y_sos - iir.sos_filter_loop(sos, x))) / np.max(np.abs(y_sos))
        assert err_tf > 1e-10 and err_sos < 1e-13, (err_tf, err_sos)
        assert np.max(np.abs(y_tf - y_sos)) / np.max(np.abs(y_sos)) < 1e-6  # the same filter, to the tf form's accuracy

    def test_causality(self):
        rng = np.random.default_rng(3)
        b, a = ss.butter(3, 0.3)
        x = rng.normal(size=(200, 2))
        x2 = x.copy()
        x2[120:] += rng.normal(size=(80, 2))
        y, y2 = iir.tf_filter(b, a, x), iir.tf_filter(b, a, x2)
        np.testing.assert_array_equal(y[:120], y2[:120])

    @pytest.mark.parametrize("func", [iir.tf_filter, iir.tf_filter_loop])
    def test_errors(self, func):
        with pytest.raises(ValueError, match="^a: expected a\\[0\\] != 0"):
            func([1.0], [0.0, 1.0], np.ones(3))
        with pytest.raises(ValueError, match="^a: expected at least one"):
            func([1.0], [], np.ones(3))
        with pytest.raises(ValueError, match="^b: expected at least one"):
            func([], [1.0], np.ones(3))
        with pytest.raises(ValueError, match="^b: expected 1 dimensions"):
            func([[1.0]], [1.0], np.ones(3))
        with pytest.raises(ValueError, match="^zi:"):
            func([1.0, 1.0], [1.0, 0.5], np.ones(3), np.ones(2))


class TestSingleChannel:
    """One 1-D signal: the block filter's single-column path (blocks as the rows of one matrix)."""

    @pytest.mark.parametrize("n", [1, 2, 15, 17, 333, 4097, 70_001])
    @pytest.mark.parametrize("radius", [0.5, 0.999, 1.0])
    def test_biquad_vs_lfilter_and_loop(self, n, radius):
        rng = np.random.default_rng(n + int(1000 * radius))
        b, a = rng.normal(size=3), np.array([1.0, -2 * radius * np.cos(0.05), radius**2])
        x, zi = rng.normal(size=n), rng.normal(size=2)
        yr, zr = ss.lfilter(b, a, x, zi=zi)
        for form_zi in (None, zi):
            out = iir.biquad_filter(b, a, x, form_zi)
            y, zf = (out, None) if form_zi is None else out
            if form_zi is None:
                close(y, ss.lfilter(b, a, x), rtol=ORACLE * 10, what="1-D biquad_filter vs lfilter")
            else:
                close(y, yr, rtol=ORACLE * 10, what="1-D biquad_filter vs lfilter")
                close(zf, zr, rtol=ORACLE * 10, what="1-D biquad_filter zf vs lfilter")
        if n < 5000:
            y, zf = iir.biquad_filter(b, a, x, zi)
            yl, zl = iir.biquad_filter_loop(b, a, x, zi)
            close(y, yl, rtol=SELF, what="1-D biquad_filter loop twin")
            close(zf, zl, rtol=SELF, what="1-D biquad_filter zf loop twin")
        # the same column through the multichannel path (two identical channels)
        close(iir.biquad_filter(b, a, x), iir.biquad_filter(b, a, np.stack([x, x], axis=1))[:, 0],
              rtol=SELF, what="1-D vs two-channel block filter")

    @pytest.mark.parametrize("n", [5, 1001, 20_003])
    def test_tf_and_sos(self, n):
        rng = np.random.default_rng(n)
        x = rng.normal(size=n)
        b, a = ss.butter(5, 0.2)
        zi = rng.normal(size=5)
        y, zf = iir.tf_filter(b, a, x, zi)
        yr, zr = ss.lfilter(b, a, x, zi=zi)
        close(y, yr, rtol=ORACLE * 10, what="1-D tf_filter vs lfilter")
        close(zf, zr, rtol=ORACLE * 10, what="1-D tf_filter zf vs lfilter")
        sos = ss.cheby1(8, 1.0, [0.1, 0.2], "bandpass", output="sos")
        zi = rng.normal(size=(sos.shape[0], 2))
        y, zf = iir.sos_filter(sos, x, zi)
        yr, zr = ss.sosfilt(sos, x, zi=zi)
        close(y, yr, rtol=ORACLE * 10, what="1-D sos_filter vs sosfilt")
        close(zf, zr, rtol=ORACLE * 10, what="1-D sos_filter zf vs sosfilt")
        if n < 5000:
            yl, zl = iir.sos_filter_loop(sos, x, zi)
            close(y, yl, rtol=SELF, what="1-D sos_filter loop twin")
            close(zf, zl, rtol=SELF, what="1-D sos_filter zf loop twin")

    def test_undamped_accuracy_against_extended_precision(self):
        """|p| = 1, N = 72000 (chapter 13): the block algorithm on one column is no less accurate
        than the float64 sample recursion, against a recursion in extended precision."""
        b, a = np.array([0.3, -0.2, 0.5]), np.array([1.0, -2 * np.cos(0.05), 1.0])
        x = np.random.default_rng(13).normal(size=72_000)
        bl, al = b.astype(np.longdouble), a.astype(np.longdouble)
        s1 = s2 = np.longdouble(0.0)
        ref = np.empty(x.size, dtype=np.longdouble)
        for n, xn in enumerate(x.astype(np.longdouble).tolist()):
            yn = bl[0] * xn + s1
            s1, s2 = bl[1] * xn - al[1] * yn + s2, bl[2] * xn - al[2] * yn
            ref[n] = yn
        ref = ref.astype(np.float64)

        def err(y):
            return np.linalg.norm(y - ref) / np.linalg.norm(ref)

        e_block, e_lfilter = err(iir.biquad_filter(b, a, x)), err(ss.lfilter(b, a, x))
        assert e_block < 2e-13, e_block
        assert e_block <= 2 * e_lfilter, (e_block, e_lfilter)


def extended_tf(b, a, x, zi=None):
    """The TDF-II recursion (13.5) of any order in np.longdouble, one column: the accuracy reference."""
    b, a = (np.asarray(c, dtype=np.longdouble) / np.longdouble(a[0]) for c in (b, a))
    q = max(a.size, b.size) - 1
    b, a = np.pad(b, (0, q + 1 - b.size)), np.pad(a, (0, q + 1 - a.size))
    s = np.zeros(q, dtype=np.longdouble) if zi is None else np.asarray(zi, dtype=np.longdouble).copy()
    y = np.empty(x.size, dtype=np.longdouble)
    for n, xn in enumerate(np.asarray(x, dtype=np.longdouble)):
        yn = b[0] * xn + (s[0] if q else 0)
        for i in range(q):
            s[i] = b[i + 1] * xn - a[i + 1] * yn + (s[i + 1] if i + 1 < q else 0)
        y[n] = yn
    return y.astype(np.float64)


def max_rel(y, ref):
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


class TestPowersThatGrow:
    """Clustered poles make the powers of the companion matrix grow (to 10⁷ for a sixth-order
    Butterworth low-pass at 0.02 Nyquist) before they decay; the block algorithm applies them in
    float64 and its error grows with them, so tf_filter, biquad_filter and sos_filter measure the
    growth and run the sample recursion (lfilter / sosfilt) beyond iir.GROWTH_MAX."""

    CLUSTERED = {
        "butter(6, 0.02)": ss.butter(6, 0.02),
        "butter(8, 0.05)": ss.butter(8, 0.05),
        "(1 - 0.95 z^-1)^-6": (np.array([1.0]), np.poly([0.95] * 6)),
        "(1 - 0.97 z^-1)^-6": (np.array([1.0]), np.poly([0.97] * 6)),
        "cheby1(4, 1, 0.02)": ss.cheby1(4, 1, 0.02),
    }

    @pytest.mark.parametrize("name", list(CLUSTERED))
    def test_clustered_poles_are_as_accurate_as_the_recursion(self, name):
        b, a = self.CLUSTERED[name]
        x = np.random.default_rng(5).normal(size=4000)
        ref = extended_tf(b, a, x)
        e_tf, e_lfilter = max_rel(iir.tf_filter(b, a, x), ref), max_rel(ss.lfilter(b, a, x), ref)
        assert e_tf <= 2 * e_lfilter + 1e-15, (name, e_tf, e_lfilter)  # before: 0.4 (butter 6) to 5e28

    def test_the_block_algorithm_would_fail_there(self):
        """Why the guard exists: the block algorithm forced on butter(6, 0.02) loses every digit."""
        from refimpl import _scan

        b, a = iir._coeffs(*ss.butter(6, 0.02))
        x = np.random.default_rng(5).normal(size=4000)
        y = _scan.block_filter(*iir._tdf2_matrices(b, a), x[:, None], np.zeros((6, 1)))[0][:, 0]
        assert max_rel(y, extended_tf(b, a, x)) > 1e-2
        assert _scan.block_filter(*iir._tdf2_matrices(b, a), x[:, None], np.zeros((6, 1)), max_growth=iir.GROWTH_MAX) is None

    def test_fallback_keeps_states_batches_and_channels(self):
        b, a = ss.butter(6, 0.02)
        rng = np.random.default_rng(6)
        x, zi = rng.normal(size=(2, 900, 3)), rng.normal(size=(2, 6, 3))
        y, zf = iir.tf_filter(b, a, x, zi)
        y_ref, zf_ref = ss.lfilter(b, a, x, axis=-2, zi=zi)
        close(y, y_ref, rtol=SELF, what="fallback y vs lfilter")
        close(zf, zf_ref, rtol=SELF, what="fallback zf vs lfilter")
        y1, zf1 = iir.tf_filter(b, a, x[0, :, 0], zi[0, :, 0])
        close(y1, y[0, :, 0], rtol=SELF, what="1-D signal")
        close(zf1, zf[0, :, 0], rtol=SELF, what="1-D state")

    @pytest.mark.parametrize("design", ["butter(4, 0.2)", "butter(2, 0.005)", "cheby1(4, 1, 0.2)"])
    def test_block_algorithm_runs_where_the_powers_stay_small(self, design, monkeypatch):
        b, a = {"butter(4, 0.2)": ss.butter(4, 0.2), "butter(2, 0.005)": ss.butter(2, 0.005),
                "cheby1(4, 1, 0.2)": ss.cheby1(4, 1, 0.2)}[design]

        def refuse(*args, **kwargs):
            raise AssertionError("lfilter called: the block algorithm was expected")

        x = np.random.default_rng(7).normal(size=3000)
        ref = extended_tf(b, a, x)
        e_lfilter = max_rel(ss.lfilter(b, a, x), ref)
        monkeypatch.setattr(iir.scipy.signal, "lfilter", refuse)
        assert max_rel(iir.tf_filter(b, a, x), ref) <= 3 * e_lfilter + 1e-15

    def test_biquad_with_a_double_pole_near_one(self):
        """(1 − 0.99999 z⁻¹)⁻²: the powers of its companion matrix reach about 10⁴ (k r^k peaks at
        k = 1/(1 − r)); an independent tester measured 1.2e-7 for the block algorithm, 9e-11 for lfilter."""
        b, a = np.array([1.0, 0.0, 0.0]), np.poly([0.99999] * 2)
        x = np.random.default_rng(8).normal(size=20_000)
        ref = extended_tf(b, a, x)
        assert max_rel(iir.biquad_filter(b, a, x), ref) <= 2 * max_rel(ss.lfilter(b, a, x), ref)

    def test_sos_cascade_judged_by_its_sections(self, monkeypatch):
        """The cascade's powers grow with the gains between sections (2.5e5 here) at no cost in
        accuracy; only a section's own growth sends it to sosfilt."""
        sos = ss.butter(8, [0.1, 0.2], "bandpass", output="sos")
        x = np.random.default_rng(9).normal(size=(3000, 2))
        y_ref = ss.sosfilt(sos, x, axis=0)

        def refuse(*args, **kwargs):
            raise AssertionError("sosfilt called: the block algorithm was expected")

        with monkeypatch.context() as m:
            m.setattr(iir.scipy.signal, "sosfilt", refuse)
            close(iir.sos_filter(sos, x), y_ref, rtol=ORACLE, what="cascade by the block algorithm vs sosfilt")
        # a section with a double pole at 0.99999: sosfilt, with the states in sosfilt's layout
        bad = np.array([[1.0, 0.0, 0.0, *np.poly([0.99999] * 2)], [0.5, 0.2, 0.1, 1.0, -0.5, 0.2]])
        zi = np.random.default_rng(10).normal(size=(2, 2, 2))
        y, zf = iir.sos_filter(bad, x, zi)
        y_s, zf_s = ss.sosfilt(bad, x, axis=0, zi=zi)
        close(y, y_s, rtol=SELF, what="refused cascade = sosfilt")
        close(zf, zf_s, rtol=SELF, what="its final states")
        close(iir.sos_filter(bad * 2.0, x), ss.sosfilt(bad, x, axis=0), rtol=SELF, what="rows with a0 = 2")

    def test_power_growth_of_sections_reads_the_diagonal_blocks(self):
        from refimpl import _scan

        rng = np.random.default_rng(11)
        P = rng.normal(size=(5, 6, 6))
        blocks = [P[:, 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] for i in range(3)]
        assert _scan.power_growth(P, section=2) == max(float(np.abs(Q).sum(-1).max()) for Q in blocks)
        assert _scan.power_growth(P) == float(np.abs(P).sum(-1).max())
        assert _scan.power_growth(np.zeros((0, 2, 2))) == 0.0


@pytest.mark.skipif(not iir.EXTENDED_PRECISION, reason="the block algorithm runs only with extended precision")
@pytest.mark.parametrize("shape", [(5000, 2), (5000, 3), (5000, 4), (2, 5000, 2), (777, 4)])
@pytest.mark.parametrize("ba", ["biquad", "order 3", "order 4"])
def test_few_columns_interleaved(shape, ba):
    """A few columns with a small joint state run as interleaved rows (refimpl._scan._block_filter_rows):
    lfilter's filter and final states, and each column what it gives alone (other blocks, the same filter)."""
    from refimpl import _scan

    b, a = {"biquad": ([0.2, 0.3, 0.1], [1.0, -1.6, 0.8]), "order 3": ss.butter(3, 0.25), "order 4": ss.butter(4, 0.2)}[ba]
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    x = rng.normal(size=shape)
    q = len(a) - 1
    zi = rng.normal(size=shape[:-2] + (q, shape[-1]))
    y, zf = iir.tf_filter(b, a, x, zi=zi)
    y_ref, zf_ref = ss.lfilter(b, a, x, axis=-2, zi=zi)
    close(y, y_ref, rtol=1e-12, what="few columns vs lfilter")
    close(zf, zf_ref, rtol=1e-12, what="final states")
    columns = int(np.prod(shape[:-2])) * shape[-1]
    flat = np.moveaxis(x, -2, 0).reshape(shape[-2], columns)
    alone = np.stack([iir.tf_filter(b, a, flat[:, l]) for l in range(columns)], axis=1)
    close(np.moveaxis(iir.tf_filter(b, a, x), -2, 0).reshape(shape[-2], columns), alone, rtol=1e-13, what="each column alone")
    _scan._PLANS.clear()
    iir.tf_filter(b, a, x)
    (plan,) = _scan._PLANS.values()
    K = _scan.block_length(q, columns, shape[-2])
    if _scan._interleaved(q, columns):  # Tᵀ ⊗ I for the interleaved rows
        assert plan.lifted[0].shape == (K * columns, K * columns)
    else:  # side by side: the single-column plan
        assert _scan._side_by_side(q, columns) and q * columns > _scan._INTERLEAVED_STATE
        assert plan.lifted[0].shape == (K, K)


@pytest.mark.skipif(not iir.EXTENDED_PRECISION, reason="the block algorithm runs only with extended precision")
@pytest.mark.parametrize("n", ["one block", "segment", "segment + 1", "segments - 1", "long"])
@pytest.mark.parametrize("columns, kind", [((2,), "sections=3"), ((3,), "sections=2"), ((3,), "order 4"),
                                           ((2, 2), "order 3"), ((5,), "biquad"), ((7,), "sections=4"),
                                           ((3, 2), "sections=2")])
def test_few_columns_side_by_side(columns, kind, n):
    """Few columns that do not run interleaved run each as a single column, side by side, a segment of
    the signal at a time (refimpl._scan._block_filter_columns): sosfilt's (lfilter's) filter and final
    states from given states, whatever the length against the segments; each column what it gives alone;
    the single-column plan of one segment."""
    from refimpl import _scan

    rng = np.random.default_rng(sum(columns) * 10 + len(kind))
    if kind.startswith("sections"):
        sos = ss.butter(2 * int(kind[-1]), 0.15, output="sos")
        b = a = None
        q = 2 * len(sos)
    else:
        b, a = {"biquad": ([0.2, 0.3, 0.1], [1.0, -1.6, 0.8]), "order 3": ss.butter(3, 0.25),
                "order 4": ss.butter(4, 0.2)}[kind]
        q = len(a) - 1
    L = int(np.prod(columns))
    assert _scan._side_by_side(q, L)
    K = _scan.block_length(q, L, 10**6)
    Ms = _scan._segment_blocks(K, L, 10**6)
    N = {"one block": K - 3, "segment": Ms * K, "segment + 1": Ms * K + 1, "segments - 1": 2 * Ms * K - 1,
         "long": 3 * Ms * K + K // 2 + 5}[n]
    shape = columns[:-1] + (N, columns[-1])
    x = rng.normal(size=shape)
    if b is None:
        zi = rng.normal(size=(len(sos),) + shape[:-2] + (2, shape[-1]))
        y, zf = iir.sos_filter(sos, x, zi)
        y_ref, zf_ref = ss.sosfilt(sos, x, axis=-2, zi=zi)
        alone = lambda col: iir.sos_filter(sos, col)  # noqa: E731
        whole = lambda: iir.sos_filter(sos, x)  # noqa: E731
    else:
        zi = rng.normal(size=shape[:-2] + (q, shape[-1]))
        y, zf = iir.tf_filter(b, a, x, zi=zi)
        y_ref, zf_ref = ss.lfilter(b, a, x, axis=-2, zi=zi)
        alone = lambda col: iir.tf_filter(b, a, col)  # noqa: E731
        whole = lambda: iir.tf_filter(b, a, x)  # noqa: E731
    close(y, y_ref, rtol=1e-12, what="side by side vs sosfilt / lfilter")
    close(zf, zf_ref, rtol=1e-12, what="final states")
    flat = np.moveaxis(x, -2, 0).reshape(N, L)
    each = np.stack([alone(flat[:, col]) for col in range(L)], axis=1)
    _scan._PLANS.clear()
    close(np.moveaxis(whole(), -2, 0).reshape(N, L), each, rtol=1e-13, what="each column alone")
    (plan,) = _scan._PLANS.values()  # the single-column plan: Tᵀ (K, K), for one segment and the state after it
    Kn = min(K, N)
    assert plan.lifted[0].shape == (Kn, Kn)
    assert plan.levels[0].Fill.shape[0] == (plan.levels[0].R + 1) * q


@pytest.mark.skipif(not iir.EXTENDED_PRECISION, reason="the block algorithm runs only with extended precision")
def test_side_by_side_reads_any_layout():
    """Strided, reversed and Fortran-ordered signals on the side-by-side path: sosfilt's result."""
    sos = ss.butter(4, 0.2, output="sos")
    big = np.random.default_rng(5).normal(size=(20001, 8))
    for x in (big[::2, ::2], big[:, 1:4], np.asfortranarray(big[:, :3]), big[::-1, :5]):
        close(iir.sos_filter(sos, x), ss.sosfilt(sos, x, axis=0), rtol=1e-12, what=f"layout {x.strides}")


def test_side_by_side_only_for_few_columns():
    """Interleaved rows first, then side by side for fewer than 8 columns (6 for biquads), then a batch of blocks."""
    from refimpl import _scan

    assert not _scan._side_by_side(4, 1) and not _scan._side_by_side(2, 2)  # one column; interleaved
    assert _scan._side_by_side(4, 3) and _scan._side_by_side(4, 7) and not _scan._side_by_side(4, 8)
    assert _scan._side_by_side(2, 5) and not _scan._side_by_side(2, 6)
    assert _scan.block_length(4, 3, 10**5) == _scan.block_length(4, 1, 10**5) == 32
    assert _scan.block_length(12, 3, 10**5) == 48 and _scan.block_length(12, 1, 10**5) == 96  # q > 8 side by side: 4q


@pytest.mark.skipif(not iir.EXTENDED_PRECISION, reason="the block algorithm runs only with extended precision")
class TestBlockPlans:
    """The block filter keeps the plans of recently used filters (refimpl._scan._block_plan):
    a kept plan must give exactly what a fresh one gives, for each filter, whatever ran before."""

    @pytest.fixture(autouse=True)
    def no_plans(self):
        from refimpl import _scan

        _scan._PLANS.clear()
        yield _scan
        _scan._PLANS.clear()

    def test_kept_plan_gives_the_fresh_result(self, no_plans):
        x = np.random.default_rng(31).normal(size=(5000, 3))
        filters = [ss.butter(4, w) for w in (0.1, 0.2, 0.3)] + [ss.cheby1(2, 1.0, 0.25)]
        fresh = []
        for b, a in filters:  # one fresh plan each
            no_plans._PLANS.clear()
            fresh.append((iir.tf_filter(b, a, x), iir.tf_filter(b, a, x[:, 0])))
        assert 1 <= len(no_plans._PLANS) <= 2  # the last filter's (K and M may coincide for 3 columns and 1)
        for _ in range(2):  # interleaved: every filter from its kept plans
            for (b, a), (y, y1) in zip(filters, fresh):
                assert np.array_equal(iir.tf_filter(b, a, x), y)
                assert np.array_equal(iir.tf_filter(b, a, x[:, 0]), y1)
        assert len(no_plans._PLANS) >= len(filters)
        close(fresh[0][0], ss.lfilter(*filters[0], x, axis=0), rtol=1e-12, what="kept plans: against lfilter")
        assert not np.array_equal(fresh[0][0], fresh[1][0])  # different filters, different plans

    def test_plans_are_bounded_and_read_only(self, no_plans):
        x = np.random.default_rng(32).normal(size=2000)
        for i in range(no_plans._PLANS_MAX + 5):
            iir.biquad_filter(*ss.butter(2, 0.05 + 0.01 * i), x)
        assert len(no_plans._PLANS) == no_plans._PLANS_MAX
        plan = next(reversed(no_plans._PLANS.values()))
        assert plan.levels, "a 2000-sample signal needs a level of the carry"
        for arr in (plan.P, plan.O, plan.T, plan.G, plan.levels[0].Fill, plan.levels[0].FeT):  # one column
            with pytest.raises(ValueError, match="read-only"):
                arr[(0,) * arr.ndim] = 1.0

    def test_plans_are_bounded_in_bytes(self, no_plans, monkeypatch):
        x = np.random.default_rng(35).normal(size=3000)
        iir.biquad_filter(*ss.butter(2, 0.1), x)
        one = no_plans._plan_bytes(next(iter(no_plans._PLANS.values())))
        assert one > 0
        monkeypatch.setattr(no_plans, "_PLANS_BYTES", int(2.5 * one))  # room for two plans of this size
        for w in (0.2, 0.3, 0.4):
            y = iir.biquad_filter(*ss.butter(2, w), x)
            assert len(no_plans._PLANS) <= 2
        assert np.array_equal(y, iir.biquad_filter(*ss.butter(2, 0.4), x))  # the newest is kept
        monkeypatch.setattr(no_plans, "_PLANS_BYTES", one // 2)  # a plan larger than the budget is not kept
        close(iir.biquad_filter(*ss.butter(2, 0.45), x), ss.lfilter(*ss.butter(2, 0.45), x), rtol=1e-12,
              what="a plan too large to keep")
        assert len(no_plans._PLANS) == 0

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_a_forked_child_does_not_wait_for_the_parents_lock(self, no_plans):
        """A process forked while another thread holds the plans' lock gets a lock of its own."""
        x = np.random.default_rng(36).normal(size=3000)
        no_plans._plans_lock.acquire()  # as if another thread were inside _block_plan at the fork
        try:
            pid = os.fork()
            if pid == 0:  # the child: filter (needs the lock) and leave at once, whatever happens
                ok = False
                try:
                    ok = np.allclose(iir.biquad_filter([0.2, 0.3, 0.1], [1.0, -1.6, 0.8], x),
                                     ss.lfilter([0.2, 0.3, 0.1], [1.0, -1.6, 0.8], x), rtol=1e-12, atol=0.0)
                finally:
                    os._exit(0 if ok else 1)
        finally:
            no_plans._plans_lock.release()
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                pytest.fail("the forked child waited for the parent's lock")
            time.sleep(0.01)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0

    def test_refused_filter_is_remembered_as_refused(self, no_plans):
        b, a = ss.butter(6, 0.02)  # clustered poles: the powers grow to 1e7 (GROWTH_MAX), lfilter runs
        x = np.random.default_rng(33).normal(size=4000)
        for _ in range(2):
            close(iir.tf_filter(b, a, x), ss.lfilter(b, a, x), rtol=SELF, what="refused: lfilter itself")
        assert list(no_plans._PLANS.values()) == [None]

    def test_key_holds_what_the_plan_is_computed_from(self, no_plans, monkeypatch):
        """A plan made with other settings is not reused: the block length, the base of the scan and
        the extended type are part of the key."""
        x = np.random.default_rng(34).normal(size=3000)
        b, a = np.array([0.3, -0.2, 0.5]), np.array([1.0, -2 * np.cos(0.05), 1.0])  # poles e^{±0.05i}
        y = iir.tf_filter(b, a, x)
        monkeypatch.setattr(no_plans, "_wide", lambda dtype: np.float64)  # A^K in plain float64
        y64 = iir.tf_filter(b, a, x)
        assert not np.array_equal(y64, y)  # the float64 powers' rounding shows
        monkeypatch.undo()
        assert np.array_equal(iir.tf_filter(b, a, x), y)
        monkeypatch.setattr(no_plans, "_STATE_SCAN_BASE", 4)
        close(iir.tf_filter(b, a, x), y, rtol=1e-12, what="another base length")
        assert len(no_plans._PLANS) == 3


class TestSosFilter:
    @pytest.mark.parametrize("shape", [(3000,), (3000, 1), (2, 3000, 3), (3000, 8)])
    def test_long_cascade_in_passes(self, shape):
        """24 sections: one column runs passes of at most _SECTIONS_PER_PASS sections (each its own block
        filter), a few columns (fewer than 8) of _SECTIONS_PER_PASS_FEW, more columns one state space; all are
        sosfilt's filter, states included."""
        from refimpl import _scan

        sos = ss.butter(48, 0.3, output="sos")
        rng = np.random.default_rng(41)
        x = rng.normal(size=shape)
        zi = rng.normal(size=(sos.shape[0],) + shape[:-2] + (2,) + ((shape[-1],) if len(shape) > 1 else ()))
        ax = -2 if len(shape) > 1 else -1
        y, zf = iir.sos_filter(sos, x, zi=zi)
        y_ref, zf_ref = ss.sosfilt(sos, x, axis=ax, zi=zi)  # the same state layout
        close(y, y_ref, rtol=1e-12, what="24 sections vs sosfilt")
        close(zf, zf_ref, rtol=1e-12, what="final states")
        _scan._PLANS.clear()
        iir.sos_filter(sos, x)
        columns = 1 if len(shape) == 1 else int(np.prod(shape[:-2])) * shape[-1]
        per_pass = iir._SECTIONS_PER_PASS if columns == 1 else iir._SECTIONS_PER_PASS_FEW if columns < 8 else 24
        passes = -(-sos.shape[0] // per_pass)
        if iir.EXTENDED_PRECISION:
            assert len(_scan._PLANS) == passes  # one plan per pass (three passes of 8 sections)

    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("design", [(4, 0.2, "lowpass"), (10, [0.1, 0.15], "bandpass"), (7, 0.6, "highpass")])
    def test_sosfilt_oracle(self, seed, design):
        rng = np.random.default_rng(seed)
        order, wn, bt = design
        sos = ss.butter(order, wn, bt, output="sos")
        x = rng.normal(size=(3, 400, 2))
        zi = rng.normal(size=(sos.shape[0], 3, 2, 2))
        yr, zr = ss.sosfilt(sos, x, axis=-2, zi=zi)
        for f in (iir.sos_filter, iir.sos_filter_loop):
            y, zf = f(sos, x, zi)
            close(y, yr, rtol=ORACLE, what="sos_filter vs sosfilt")
            close(zf, zr, rtol=ORACLE, what="sos_filter zf vs sosfilt")
        close(iir.sos_filter(sos, x), ss.sosfilt(sos, x, axis=-2), rtol=ORACLE, what="sos_filter vs sosfilt")
        close(iir.sos_filter(sos, x, form="df1"), iir.sos_filter_loop(sos, x, form="df1"),
              rtol=SELF, what="sos_filter df1 loop twin")

    def test_one_dimensional_and_stability(self):
        sos = ss.cheby1(6, 1.0, 0.3, output="sos")
        x = np.random.default_rng(0).normal(size=300)
        close(iir.sos_filter(sos, x, require_stable=True), ss.sosfilt(sos, x), rtol=ORACLE, what="sos_filter 1-D")
        bad = sos.copy()
        bad[1, 3:] = [1.0, 0.0, -1.2]
        with pytest.raises(ValueError, match="^sos: expected stable sections, section 1"):
            iir.sos_filter(bad, x, require_stable=True)

    @pytest.mark.parametrize("func", [iir.sos_filter, iir.sos_filter_loop])
    def test_errors(self, func):
        x = np.ones(5)
        with pytest.raises(ValueError, match="^sos: expected shape"):
            func(np.ones((2, 5)), x)
        with pytest.raises(ValueError, match="^sos: expected 2 dimensions"):
            func(np.ones(6), x)
        with pytest.raises(ValueError, match="^sos: expected a0"):
            func([[1, 0, 0, 0, 0, 0]], x)
        with pytest.raises(ValueError, match="^sos: expected finite"):
            func([[1, 0, 0, 1, np.nan, 0]], x)
        with pytest.raises(ValueError, match="^zi: expected shape"):
            func([[1, 0, 0, 1, 0, 0]], x, np.zeros((2, 2)))
        with pytest.raises(ValueError, match="^form:"):
            func([[1, 0, 0, 1, 0, 0]], x, form="lattice")


class TestImpulseResponse:
    @pytest.mark.parametrize("seed", SEEDS)
    def test_against_lfilter(self, seed):
        rng = np.random.default_rng(seed)
        b, a = random_biquad(rng)
        ref = ss.lfilter(b, a, ss.unit_impulse(100))
        close(iir.impulse_response(b, a, 100), ref, rtol=ORACLE, what="impulse_response vs lfilter")
        close(iir.impulse_response_loop(b, a, 100), ref, rtol=ORACLE, what="impulse_response_loop vs lfilter")
        b, a = ss.cheby1(5, 0.5, 0.3)
        close(iir.impulse_response(b, a, 80), iir.impulse_response_loop(b, a, 80), rtol=SELF, what="impulse loop twin")
        close(iir.impulse_response_loop(b, a, 80), ss.dimpulse((b, a, 1), n=80)[1][0][:, 0], rtol=ORACLE,
              what="impulse_response_loop vs dimpulse")

    @pytest.mark.parametrize("kind", ["real", "complex", "double"])
    @pytest.mark.parametrize("seed", SEEDS)
    def test_closed_form(self, kind, seed):
        rng = np.random.default_rng(seed)
        if kind == "double":
            p = rng.uniform(-0.95, 0.95)
            a = np.array([1.0, -2 * p, p * p])
            assert a[1] ** 2 - 4 * a[2] == 0.0 or p == 0.5  # an exact double pole in floating point
            a[2] = a[1] ** 2 / 4.0  # make the discriminant exactly zero
        else:
            _, a = random_biquad(rng, kind=kind)
        b = rng.normal(size=3)
        h = iir.biquad_impulse_closed_form(b, a, 120)
        ref = ss.lfilter(b, a, ss.unit_impulse(120))
        close(h, ref, rtol=ORACLE, what=f"closed-form impulse ({kind}) vs lfilter")

    def test_focus_all_pole_cases(self):
        """The three cases at Focus parameters: h[n] = (p1^{n+1} − p2^{n+1})/(p1 − p2), r^n sin((n+1)ω)/sin ω, (n+1)p^n."""
        n = np.arange(30)
        h = iir.biquad_impulse_closed_form([1, 0, 0], [1, 0.9, 0.1], 30)  # real poles
        p1, p2 = np.roots([1, 0.9, 0.1])
        close(h, (p1 ** (n + 1) - p2 ** (n + 1)) / (p1 - p2), rtol=ORACLE, what="closed form real (formula)")
        h = iir.biquad_impulse_closed_form([1, 0, 0], [1, 0.5, 0.81], 30)  # r = 0.9
        w0 = np.arccos(-0.5 / (2 * 0.9))
        close(h, 0.9**n * np.sin((n + 1) * w0) / np.sin(w0), rtol=ORACLE, what="closed form complex (formula)")
        h = iir.biquad_impulse_closed_form([1, 0, 0], [1, 1.0, 0.25], 30)  # double pole −1/2
        close(h, (n + 1) * (-0.5) ** n, rtol=ORACLE, what="closed form double (formula)")

    def test_errors(self):
        with pytest.raises(ValueError, match="^n:"):
            iir.impulse_response([1.0], [1.0], 0)
        with pytest.raises(TypeError, match="^n:"):
            iir.impulse_response_loop([1.0], [1.0], 2.5)
        with pytest.raises(ValueError, match="^a:"):
            iir.biquad_impulse_closed_form([1, 0, 0], [0, 1, 0], 5)
        with pytest.raises(ValueError, match="^b:"):
            iir.biquad_impulse_closed_form([1, 0], [1, 1, 0], 5)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


class TestFrequencyResponse:
    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("whole", [False, True])
    @pytest.mark.parametrize("n", [7, 64, 513])
    def test_freqz(self, seed, whole, n):
        rng = np.random.default_rng(seed)
        b, a = ss.cheby1(4, 1.0, rng.uniform(0.1, 0.8))
        wr, hr = ss.freqz(b, a, worN=n, whole=whole)
        for f in (iir.frequency_response, iir.frequency_response_loop):
            w, h = f(b, a, n, whole=whole)
            close(w, wr, rtol=ORACLE, what="frequency grid vs freqz")
            close(h, hr, rtol=ORACLE, what="frequency_response vs freqz")

    def test_focus_p5_grid(self):
        """P-5 on the FFT grid: 1/(1 + θ0 e^{−i2πk/N} + θ1 e^{−i4πk/N}) = freqz(..., whole=True)."""
        rng = np.random.default_rng(0)
        for nfft in (16, 33):
            th = rng.uniform(0, 1, 2)
            f = np.arange(nfft) / nfft
            p5 = 1.0 / (1 + th[0] * np.exp(-2j * np.pi * f) + th[1] * np.exp(-4j * np.pi * f))
            close(iir.frequency_response([1.0], [1.0, *th], nfft, whole=True)[1], p5, rtol=ORACLE, what="P-5 grid")

    def test_array_of_frequencies_and_sos(self):
        sos = ss.butter(9, [0.2, 0.3], "bandpass", output="sos")
        w = np.linspace(0.01, 3.1, 37)
        _, hr = ss.sosfreqz(sos, worN=w)
        close(iir.sos_frequency_response(sos, w)[1], hr, rtol=ORACLE, what="sos_frequency_response vs sosfreqz")
        b, a = ss.butter(3, 0.3)
        close(iir.frequency_response(b, a, w)[1], ss.freqz(b, a, worN=w)[1], rtol=ORACLE, what="frequency_response(w)")

    def test_analog(self):
        b, a = ss.butter(5, 2.0, analog=True)
        w = np.logspace(-1, 1, 50)
        close(iir.analog_frequency_response(b, a, w)[1], ss.freqs(b, a, worN=w)[1], rtol=ORACLE,
              what="analog_frequency_response vs freqs")

    @pytest.mark.parametrize("func", [iir.frequency_response, iir.frequency_response_loop, iir.group_delay, iir.group_delay_loop])
    @pytest.mark.parametrize(
        "w, kwargs, exc",
        [(0, {}, ValueError), (-3, {}, ValueError), (2.5, {}, ValueError), ([0.1, np.nan], {}, ValueError),
         ([[0.1, 0.2]], {}, ValueError), ([0.1j], {}, TypeError), (True, {}, TypeError), (8, {"whole": "yes"}, TypeError)],
    )
    def test_bad_frequencies(self, func, w, kwargs, exc):
        match = "whole" if "whole" in kwargs else "w"
        with pytest.raises(exc, match=f"^{match}:"):
            func([1.0], [1.0, 0.5], w, **kwargs)

    def test_pole_on_unit_circle_gives_inf_without_warning(self):
        _, h = iir.frequency_response([1.0], [1.0, -1.0], np.array([0.0, 1.0]))
        assert np.isinf(h[0]) and np.isfinite(h[1])


class TestGroupDelay:
    @pytest.mark.parametrize("seed", SEEDS)
    def test_scipy(self, seed):
        rng = np.random.default_rng(seed)
        b, a = random_biquad(rng, radius=(0.3, 0.9))
        w = np.linspace(0.05, 3.0, 41)
        _, gr = ss.group_delay((b, a), w=w)
        for f in (iir.group_delay, iir.group_delay_loop):
            close(f(b, a, w)[1], gr, rtol=1e-11, what="group_delay vs scipy")

    def test_butter_and_numeric_derivative(self):
        b, a = ss.butter(6, 0.3)
        # away from Nyquist, where the six zeros at z = −1 make B(e^{iω}) vanish (both sides lose digits there)
        w = np.linspace(0.0, 2.5, 200)
        _, gd = iir.group_delay(b, a, w)
        close(gd, ss.group_delay((b, a), w=w)[1], rtol=1e-11, what="group_delay vs scipy (butter)")
        # −d(unwrapped phase)/dω by central differences
        h = 1e-6
        ph = lambda ww: np.unwrap(np.angle(iir.frequency_response(b, a, ww)[1]))
        wm = w[1:-1]
        num = -(ph(wm + h) - ph(wm - h)) / (2 * h)
        assert_close(gd[1:-1], num, rtol=1e-6, what="group delay vs finite difference")

    def test_zero_on_unit_circle_is_nan(self):
        for f in (iir.group_delay, iir.group_delay_loop):
            _, gd = f([1.0, -1.0], [1.0], np.array([0.0, 1.0]))  # B(e^{i0}) = 0 exactly
            assert np.isnan(gd[0]) and gd[1] == pytest.approx(0.5, rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------


def sorted_c(x):
    return np.sort_complex(np.asarray(x, dtype=complex))


class TestConversions:
    @pytest.mark.parametrize("seed", SEEDS)
    def test_tf2zpk_zpk2tf(self, seed):
        rng = np.random.default_rng(seed)
        b, a = ss.cheby1(5, 0.5, rng.uniform(0.1, 0.9))
        z, p, k = iir.tf2zpk(b, a)
        zr, pr, kr = ss.tf2zpk(b, a)
        close(sorted_c(p), sorted_c(pr), rtol=1e-12, what="tf2zpk poles vs scipy")
        close(k, kr, rtol=ORACLE, what="tf2zpk gain vs scipy")
        assert z.size == zr.size
        bb, aa = iir.zpk2tf(z, p, k)
        br, ar = ss.zpk2tf(zr, pr, kr)
        assert bb.dtype == np.float64 and aa.dtype == np.float64
        close(bb, br, rtol=1e-10, what="zpk2tf numerator vs scipy")  # 5 zeros clustered at −1
        close(aa, ar, rtol=ORACLE, what="zpk2tf denominator vs scipy")
        close(aa, a, rtol=ORACLE, what="zpk2tf(tf2zpk) round trip")

    def test_padding_gives_poles_at_origin(self):
        z, p, k = iir.tf2zpk([1.0, 0.5], [1.0, -0.5, 0.06])
        close(sorted_c(z), sorted_c([-0.5, 0.0]), rtol=ORACLE, what="zero at origin")
        z, p, k = iir.tf2zpk([0.0, 2.0], [1.0])  # y = 2 x[n−1]: a pole at 0, k = 2
        assert k == 2.0 and np.allclose(p, [0.0])

    def test_complex_roots_stay_complex(self):
        b, a = iir.zpk2tf([1j], [0.5], 1.0)
        assert np.iscomplexobj(b) and not np.iscomplexobj(a)

    @pytest.mark.parametrize("design", [
        ("butter", 8, 0.3, "lowpass"), ("butter", 7, [0.2, 0.4], "bandpass"), ("cheby1", 9, 0.6, "highpass"),
        ("cheby1", 5, [0.1, 0.7], "bandpass"), ("butter", 1, 0.5, "lowpass"),
    ])
    def test_zpk2sos_matches_scipy(self, design):
        name, order, wn, bt = design
        args = (order, wn, bt) if name == "butter" else (order, 1.0, wn, bt)
        z, p, k = getattr(ss, name)(*args, output="zpk")
        close(iir.zpk2sos(z, p, k), ss.zpk2sos(z, p, k), rtol=ORACLE, what="zpk2sos vs scipy")
        sos = ss.zpk2sos(z, p, k)
        zz, pp, kk = iir.sos2zpk(sos)
        zr, pr, kr = ss.sos2zpk(sos)  # both pad odd orders with a pole and a zero at the origin
        close(sorted_c(pp), sorted_c(pr), rtol=1e-10, what="sos2zpk poles vs scipy")
        close(sorted_c(zz), sorted_c(zr), rtol=1e-7, what="sos2zpk zeros vs scipy")  # clustered at ±1
        close(kk, kr, rtol=ORACLE, what="sos2zpk gain vs scipy")
        bb, aa = iir.sos2tf(sos)
        br, ar = ss.sos2tf(sos)
        close(bb, br, rtol=ORACLE, what="sos2tf vs scipy")
        close(aa, ar, rtol=ORACLE, what="sos2tf vs scipy")

    def test_zpk2sos_mixed_real_and_complex(self):
        rng = np.random.default_rng(7)
        for _ in range(20):
            zc = rng.uniform(0.2, 0.95) * np.exp(1j * rng.uniform(0.1, 3))
            pc = rng.uniform(0.2, 0.95) * np.exp(1j * rng.uniform(0.1, 3))
            z = np.array([zc, np.conj(zc), rng.uniform(-1, 1)])
            p = np.array([pc, np.conj(pc), rng.uniform(-0.9, 0.9), rng.uniform(-0.9, 0.9)])
            k = rng.uniform(0.5, 2)
            close(iir.zpk2sos(z, p, k), ss.zpk2sos(z, p, k), rtol=1e-12, what="zpk2sos mixed vs scipy")

    def test_tf2sos_response(self):
        b, a = ss.butter(6, 0.25)
        sos = iir.tf2sos(b, a)
        close(iir.sos_frequency_response(sos, 64)[1], ss.freqz(b, a, 64)[1], rtol=1e-10, what="tf2sos response")

    def test_errors(self):
        with pytest.raises(ValueError, match="^p: expected poles closed under"):
            iir.zpk2sos([], [0.5j], 1.0)
        with pytest.raises(ValueError, match="^z: expected zeros closed under"):
            iir.zpk2sos([0.5j], [0.5], 1.0)
        with pytest.raises(ValueError, match="^k: expected 0 dimensions"):
            iir.zpk2tf([], [0.5], [1.0, 2.0])
        with pytest.raises(ValueError, match="^b: expected a nonzero numerator"):
            iir.tf2zpk([0.0, 0.0], [1.0])
        with pytest.raises(ValueError, match="^a: expected a\\[0\\] != 0"):
            iir.tf2zpk([1.0], [0.0])
        with pytest.raises(ValueError, match="^p: expected finite"):
            iir.zpk2tf([], [np.nan], 1.0)


# ---------------------------------------------------------------------------------------------
# Stability
# ---------------------------------------------------------------------------------------------


class TestStability:
    @settings(max_examples=300)
    @given(st.floats(-2.5, 2.5), st.floats(-1.5, 1.5))
    def test_triangle_iff_poles_inside(self, a1, a2):
        r = np.max(np.abs(np.roots([1.0, a1, a2])))
        if abs(r - 1.0) < 1e-9:  # on the boundary np.roots and the predicate may round differently
            return
        assert bool(iir.in_stability_triangle([1.0, a1, a2])) == (r < 1.0)
        assert iir.is_stable([1.0, a1, a2]) == (r < 1.0)
        assert iir.pole_radius([1.0, a1, a2]) == pytest.approx(r, rel=1e-9, abs=1e-12)

    @settings(max_examples=200)
    @given(st.floats(1e-6, 1 - 1e-6), st.floats(1e-6, 1 - 1e-6))
    def test_focus_sigmoid_range_is_stable(self, t0, t1):
        """θ ∈ (0, 1)²: inside the triangle; complex poles have |p| = sqrt(θ1); real poles are negative."""
        a = [1.0, t0, t1]
        assert iir.in_stability_triangle(a)
        p = iir.biquad_poles(a)
        assert np.max(np.abs(p)) < 1.0
        if t0**2 < 4 * t1:
            assert np.allclose(np.abs(p), np.sqrt(t1), rtol=1e-12)
            f0 = np.angle(p[0]) / (2 * np.pi)
            assert 0.25 < f0 < 0.5
        else:
            assert np.all(p.real < 0) and np.all(p.imag == 0)

    def test_biquad_poles_vs_roots_batch(self):
        rng = np.random.default_rng(0)
        a = np.concatenate([np.ones((500, 1)), rng.uniform(-2, 2, (500, 2))], axis=1)
        p = iir.biquad_poles(a)
        for i in range(500):
            close(sorted_c(p[i]), sorted_c(np.roots(a[i])), rtol=1e-12, what="biquad_poles vs np.roots")
        tri = iir.in_stability_triangle(a)
        assert tri.shape == (500,)
        np.testing.assert_array_equal(tri, np.max(np.abs(p), axis=1) < 1)

    def test_poles_on_the_unit_circle_are_unstable(self):
        """a = [1, −2 cos θ, 1]: both poles on the unit circle. Root-finding rounds their radius to
        either side of 1; the Schur–Cohn test on the coefficients does not (an independent tester
        found 104 of 300 angles accepted as stable by the root radius)."""
        for theta in np.linspace(0.01, np.pi - 0.01, 300):
            a = [1.0, -2 * np.cos(theta), 1.0]
            assert not iir.is_stable(a) and iir.pole_radius(a) == 1.0
            with pytest.raises(ValueError, match="^a: expected a stable filter"):
                iir.biquad_filter([1.0, 0.0, 0.0], a, np.ones(4), require_stable=True)
            with pytest.raises(ValueError, match="^sos: expected stable sections"):
                iir.sos_filter([[1.0, 0.0, 0.0, *a]], np.ones(4), require_stable=True)
        assert not iir.is_stable(np.poly([1.0, 0.5, 0.3]))  # a real pole at 1, order 3
        assert not iir.is_stable(np.real(np.poly([np.exp(0.4j), np.exp(-0.4j), 0.5, -0.2])))

    @settings(max_examples=200)
    @given(st.integers(1, 12), st.integers(0, 2**32 - 1))
    def test_schur_cohn_agrees_with_the_roots_off_the_boundary(self, q, seed):
        rng = np.random.default_rng(seed)
        a = np.concatenate([[1.0], rng.uniform(-1.5, 1.5, q)])
        r = np.max(np.abs(np.roots(a)))
        if abs(r - 1.0) < 1e-6:
            return
        assert iir.is_stable(a) == (r < 1.0), (a, r)
        assert iir.is_stable(np.concatenate([a, [0.0, 0.0]])) == (r < 1.0)  # trailing zeros: poles at 0

    def test_triangle_corners(self):
        # corners (a1, a2) = (±2, 1) and (0, −1) are on the boundary: not strictly stable
        for a1, a2 in [(2, 1), (-2, 1), (0, -1), (0, 1), (1.5, 0.5)]:
            assert not iir.in_stability_triangle([1.0, a1, a2])
        assert iir.in_stability_triangle([1.0, 1.5, 0.51])

    def test_errors(self):
        with pytest.raises(ValueError, match="^a: expected biquad denominators"):
            iir.in_stability_triangle([1.0, 0.5])
        with pytest.raises(ValueError, match="^a: expected a\\[..., 0\\] != 0"):
            iir.biquad_poles([[0.0, 0.5, 0.1]])
        with pytest.raises(ValueError, match="^a: expected finite"):
            iir.in_stability_triangle([1.0, np.nan, 0.1])
        with pytest.raises(ValueError, match="^a:"):
            iir.pole_radius([0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Design
# ---------------------------------------------------------------------------------------------


class TestPrototypes:
    @pytest.mark.parametrize("order", [1, 2, 5, 8, 13])
    def test_buttap_cheb1ap(self, order):
        z, p, k = iir.buttap(order)
        zr, pr, kr = ss.buttap(order)
        close(sorted_c(p), sorted_c(pr), rtol=ORACLE, what="buttap vs scipy")
        assert k == kr and z.size == 0
        close(np.abs(p), np.ones(order), rtol=ORACLE, what="Butterworth poles on the unit circle")
        for rp in (0.1, 1.0, 3.0):
            z, p, k = iir.cheb1ap(order, rp)
            zr, pr, kr = ss.cheb1ap(order, rp)
            close(sorted_c(p), sorted_c(pr), rtol=ORACLE, what="cheb1ap vs scipy")
            close(k, kr, rtol=ORACLE, what="cheb1ap gain vs scipy")

    def test_chebyshev_ripple(self):
        """|H(iΩ)|² oscillates between 1 and 1/(1 + ε²) on the passband |Ω| ≤ 1."""
        rp = 1.0
        z, p, k = iir.cheb1ap(6, rp)
        b, a = np.atleast_1d(k * np.real(np.poly(z))), np.real(np.poly(p))
        _, h = iir.analog_frequency_response(b, a, np.linspace(0, 1, 2001))
        g = 20 * np.log10(np.abs(h))
        assert g.max() <= 1e-10 and g.min() == pytest.approx(-rp, abs=1e-4)

    @pytest.mark.parametrize("seed", SEEDS)
    def test_frequency_transformations(self, seed):
        rng = np.random.default_rng(seed)
        z, p, k = ss.cheb1ap(5, 0.5)
        wo, bw = rng.uniform(0.5, 3), rng.uniform(0.2, 2)
        for mine, ref in [
            (iir.lp2lp_zpk(z, p, k, wo), ss.lp2lp_zpk(z, p, k, wo)),
            (iir.lp2hp_zpk(z, p, k, wo), ss.lp2hp_zpk(z, p, k, wo)),
            (iir.lp2bp_zpk(z, p, k, wo, bw), ss.lp2bp_zpk(z, p, k, wo, bw)),
        ]:
            close(sorted_c(mine[0]), sorted_c(ref[0]), rtol=ORACLE, what="lp2xx zeros vs scipy")
            close(sorted_c(mine[1]), sorted_c(ref[1]), rtol=ORACLE, what="lp2xx poles vs scipy")
            close(mine[2], ref[2], rtol=ORACLE, what="lp2xx gain vs scipy")

    def test_errors(self):
        with pytest.raises(ValueError, match="^order:"):
            iir.buttap(0)
        with pytest.raises(TypeError, match="^order:"):
            iir.cheb1ap(2.0, 1.0)
        with pytest.raises(ValueError, match="^rp:"):
            iir.cheb1ap(3, -1.0)
        with pytest.raises(ValueError, match="^wo:"):
            iir.lp2lp_zpk([], [-1.0], 1.0, 0.0)
        with pytest.raises(ValueError, match="^bw:"):
            iir.lp2bp_zpk([], [-1.0], 1.0, 1.0, np.inf)
        with pytest.raises(ValueError, match="^z, p: expected no more zeros"):
            iir.lp2hp_zpk([1.0, 2.0], [-1.0], 1.0)


# ---------------------------------------------------------------------------------------------
# A decimal reference for impulse invariance (no roots, no partial fractions)
# ---------------------------------------------------------------------------------------------

_II_PREC = 70


def _dmat_mul(X, Y):
    return [[sum((X[i][k] * Y[k][j] for k in range(len(Y))), Decimal(0)) for j in range(len(Y[0]))] for i in range(len(X))]


def impulse_invariance_ref(b, a, fs):
    """(bd, ad) of ``h_d[n] = T h_a(nT)`` for analog (b, a), in 90-digit decimal arithmetic.

    ``b``, ``a`` are doubles (taken at their exact decimal values) or ``Decimal``s. The route
    shares nothing with the library's: the companion matrix of the exact coefficients, e^{AT} by
    its Taylor series with scaling and squaring, ``ad = det(I − z⁻¹ e^{AT})`` by Faddeev–LeVerrier
    (no eigenvalues), ``h_d[n] = T C e^{AnT} B`` and ``bd = (ad ∗ h_d)[0:q]``; the result is
    correct to far beyond float64 for the given inputs.
    """
    with localcontext() as ctx:
        ctx.prec = _II_PREC + 20
        dec = lambda x: x if isinstance(x, Decimal) else Decimal(float(x))  # noqa: E731
        b, a = [dec(x) for x in b], [dec(x) for x in a]
        while a[0] == 0:
            a = a[1:]
        q = len(a) - 1
        b = [Decimal(0)] * (q - len(b)) + b  # coefficients of s^{q-1} … s^0
        T = 1 / Decimal(float(fs))
        M = [[Decimal(0)] * q for _ in range(q)]
        for j in range(q):
            M[0][j] = -a[j + 1] / a[0] * T  # A T, A the companion matrix
        for i in range(1, q):
            M[i][i - 1] = T
        C = [x / a[0] for x in b]
        norm, squarings = max(sum(abs(x) for x in row) for row in M), 0
        while norm > Decimal("0.5"):
            norm, squarings = norm / 2, squarings + 1
        M = [[x / 2**squarings for x in row] for row in M]
        E = [[Decimal(int(i == j)) for j in range(q)] for i in range(q)]
        term, k, tiny = [row[:] for row in E], 0, Decimal(10) ** (-(_II_PREC + 10))
        while max(abs(x) for row in term for x in row) >= tiny:  # Taylor series of e^{M}
            k += 1
            term = [[x / k for x in row] for row in _dmat_mul(term, M)]
            E = [[E[i][j] + term[i][j] for j in range(q)] for i in range(q)]
        for _ in range(squarings):
            E = _dmat_mul(E, E)
        # Faddeev–LeVerrier: det(λI − E) = λ^q + c_1 λ^{q−1} + … + c_q
        ad, Mk = [Decimal(1)], [[Decimal(0)] * q for _ in range(q)]
        for k in range(1, q + 1):
            Mk = _dmat_mul(E, Mk)
            for i in range(q):
                Mk[i][i] += ad[-1]
            EM = _dmat_mul(E, Mk)
            ad.append(-sum((EM[i][i] for i in range(q)), Decimal(0)) / k)
        h, x = [], [Decimal(int(i == 0)) for i in range(q)]
        for n in range(q):
            h.append(T * sum((C[j] * x[j] for j in range(q)), Decimal(0)))  # h_d[n] = T C E^n B
            x = [sum((E[i][j] * x[j] for j in range(q)), Decimal(0)) for i in range(q)]
        bd = [sum((ad[i] * h[j - i] for i in range(j + 1)), Decimal(0)) for j in range(q)] + [Decimal(0)]
        return np.array([float(v) for v in bd]), np.array([float(v) for v in ad])


def decimal_poly(roots):
    """Exact decimal coefficients of Π(s − r) for real roots and conjugate pairs (each pair given once)."""
    c = [Decimal(1)]
    for r in roots:
        r = complex(r)
        if r.imag == 0:
            f = [Decimal(1), -Decimal(r.real)]
        else:  # (s − r)(s − r̄) = s² − 2 Re r s + |r|²
            f = [Decimal(1), -2 * Decimal(r.real), Decimal(r.real) ** 2 + Decimal(r.imag) ** 2]
        out = [Decimal(0)] * (len(c) + len(f) - 1)
        for i, ci in enumerate(c):
            for j, fj in enumerate(f):
                out[i + j] += ci * fj
        c = out
    return c


def nrel(actual, desired):
    """Norm-wise relative error of a pair (bd, ad) against the reference pair."""
    a, d = np.concatenate([np.ravel(x) for x in actual]), np.concatenate([np.ravel(x) for x in desired])
    return float(np.max(np.abs(a - d)) / np.max(np.abs(d)))


class TestImpulseInvarianceExact:
    """Impulse invariance where partial fractions cancel (close poles), against the decimal reference."""

    def test_reference(self):
        # the reference itself: 1/(s+1) → T/(1 − e^{−T} z⁻¹), and 1/(s+1)² → T² e^{−T} z⁻¹/(1 − e^{−T} z⁻¹)²
        bd, ad = impulse_invariance_ref([1.0], [1.0, 1.0], 2.0)
        assert bd.tolist() == [0.5, 0.0] and ad.tolist() == [1.0, -np.exp(-0.5)]
        bd, ad = impulse_invariance_ref([1.0], [1.0, 2.0, 1.0], 4.0)
        e = np.exp(-0.25)
        close(bd, np.array([0.0, e / 16, 0.0]), rtol=4e-16, what="decimal reference, double pole")
        close(ad, np.array([1.0, -2 * e, e * e]), rtol=4e-16, what="decimal reference, double pole")
        with localcontext() as ctx:
            ctx.prec = 40
            assert decimal_poly([-1.0, -0.5 + 2j]) == [1, Decimal(2), Decimal("5.25"), Decimal("4.25")]

    @pytest.mark.parametrize("fs", [1.0, 10.0, 100.0])
    def test_close_real_poles(self, fs):
        # H_a = 1/Π_{k<5}(s + 1 + 0.1k): residues up to ~4e3 that cancel in partial fractions
        # (the former route was off by 1.4e-7 norm-wise at fs = 1 and gave bd[0] = −1.8e-7).
        a = np.poly(-(1 + 0.1 * np.arange(5))).real
        bd, ad = iir.impulse_invariance([1.0], a, fs)
        err = nrel((bd, ad), impulse_invariance_ref([1.0], a, fs))
        record("impulse_invariance close poles vs decimal reference", err, 1e-12)
        assert err <= 1e-12
        assert bd[0] == 0.0 and bd[-1] == 0.0  # h_a(0) = 0 for relative degree 5: exactly

    @pytest.mark.parametrize("seed", range(6))
    def test_random_clusters(self, seed):
        # three real poles 0.03–0.3 apart, a complex pair, a random numerator of degree 2
        rng = np.random.default_rng(seed)
        p = -rng.uniform(0.5, 1.0) - np.cumsum(rng.uniform(0.03, 0.3, 3))
        pc = complex(-rng.uniform(0.2, 1.0), rng.uniform(0.5, 3.0))
        a = np.poly(np.concatenate([p, [pc, pc.conjugate()]])).real
        b = rng.normal(size=3)
        for fs in (1.0, 7.0, 100.0):
            err = nrel(iir.impulse_invariance(b, a, fs), impulse_invariance_ref(b, a, fs))
            record("impulse_invariance random clusters vs decimal reference", err, 1e-12)
            assert err <= 1e-12, f"fs={fs}: {err:.3e}"

    def test_wide_coefficient_range(self):
        # an 8th-order Butterworth at 1 kHz: a's coefficients span 1 … 1e29 (frequency scaling)
        z, p, k = ss.lp2lp_zpk(*ss.buttap(8), 2 * np.pi * 1e3)
        b, a = ss.zpk2tf(z, p, k)
        for fs in (8e3, 48e3):
            err = nrel(iir.impulse_invariance(b, a, fs), impulse_invariance_ref(b, a, fs))
            record("impulse_invariance 8th-order Butterworth vs decimal reference", err, 1e-12)
            assert err <= 1e-12, f"fs={fs}: {err:.3e}"

    @pytest.mark.parametrize("fs, tol", [(10.0, 1e-12), (1e3, 1e-11), (1e4, 1e-12)])
    def test_aliased_bandpass(self, fs, tol):
        # a 10th-order Chebyshev bandpass at 3 kHz sampled far below its band: |p|T up to 2000 rad.
        # Rounding a's coefficients alone moves the exact result by 2.4e-12 at fs = 1e3 (the
        # reference recomputed with a and b perturbed by one ulp), so 1e-11 is the conditioning
        # there; a companion-form realization was off by 4.2e-7 (fs = 10) and 1.1e-9 (fs = 1e3).
        z, p, k = ss.lp2bp_zpk(*ss.cheb1ap(5, 1.0), 2 * np.pi * 3e3, 2 * np.pi * 500)
        b, a = ss.zpk2tf(z, p, k)
        err = nrel(iir.impulse_invariance(b, a, fs), impulse_invariance_ref(b, a, fs))
        record(f"impulse_invariance aliased bandpass (fs={fs:g}) vs decimal reference", err, tol)
        assert err <= tol, f"fs={fs}: {err:.3e}"

    def test_repeated_pole(self):
        # 1/(s+1)² and 1/(s+1)³ (partial fractions with distinct poles cannot represent them)
        T = 0.25
        e = np.exp(-T)
        bd, ad = iir.impulse_invariance([1.0], [1.0, 2.0, 1.0], 1 / T)
        close(bd, np.array([0.0, T * T * e, 0.0]), rtol=ORACLE, what="impulse invariance, double pole")
        close(ad, np.array([1.0, -2 * e, e * e]), rtol=ORACLE, what="impulse invariance, double pole")
        bd, ad = iir.impulse_invariance([2.0], [1.0, 3.0, 3.0, 1.0], 1 / T)
        err = nrel((bd, ad), impulse_invariance_ref([2.0], [1.0, 3.0, 3.0, 1.0], 1 / T))
        assert err <= 1e-12
        n = np.arange(40)
        close(iir.impulse_response(bd, ad, 40), T * (n * T) ** 2 * np.exp(-n * T), rtol=ORACLE,
              what="h_d[n] = T h_a(nT), h_a = t² e^{-t}")

    @pytest.mark.parametrize("fs", [1.0, 10.0])
    def test_zpk_input(self, fs):
        # poles given exactly (no root finding): the reference takes Π(s − p_i) in exact decimal
        p_real = -(1 + 0.1 * np.arange(4))
        pc = complex(-0.7, 1.3)
        zeros = np.array([-3.0, 0.5])
        k = 2.5
        p = np.concatenate([p_real, [pc, pc.conjugate()]])
        zd, pd, kd = iir.impulse_invariance_zpk(zeros, p, k, fs)
        assert pd.dtype == np.complex128 and isinstance(kd, float)
        np.testing.assert_array_equal(pd, np.exp(p / fs))  # the pole map, exactly
        with localcontext() as ctx:
            ctx.prec = 90
            num = [Decimal(k) * c for c in decimal_poly(zeros)]
            den = decimal_poly(list(p_real) + [pc])
        ref = impulse_invariance_ref(num, den, fs)
        bd, ad = iir.zpk2tf(zd, pd, kd)
        # k Π(z − z_i)/Π(z − p_i) with fewer zeros than poles: b is a polynomial in z of lower
        # degree, i.e. in powers of z⁻¹ it starts later (the zero at infinity of bd[0] = 0)
        bd = np.concatenate([np.zeros(ref[0].size - bd.size), bd])
        err = nrel((bd, ad), ref)
        record("impulse_invariance_zpk vs decimal reference", err, 1e-12)
        assert err <= 1e-12
        # and the (b, a) route agrees on the same system
        close(iir.impulse_invariance(*iir.zpk2tf(zeros, p, k), fs)[0], ref[0], rtol=ORACLE, what="tf route, zpk system")

    def test_matches_cont2discrete(self):
        b, a = [0.3, -1.0, 2.0], [1.0, 2.2, 4.1, 3.0, 1.5]
        bz, az, _ = ss.cont2discrete((b, a), 0.3, method="impulse")
        bd, ad = iir.impulse_invariance(b, a, 1 / 0.3)
        close(ad, az, rtol=ORACLE, what="impulse invariance vs cont2discrete (den)")
        close(bd, np.ravel(bz), rtol=ORACLE, what="impulse invariance vs cont2discrete (num)")

    def test_zpk_errors(self):
        with pytest.raises(ValueError, match="^z, p: expected fewer zeros"):
            iir.impulse_invariance_zpk([1.0], [-1.0], 1.0, 1.0)
        with pytest.raises(ValueError, match="^k: expected a nonzero"):
            iir.impulse_invariance_zpk([], [-1.0], 0.0, 1.0)
        with pytest.raises(ValueError, match="^fs:"):
            iir.impulse_invariance_zpk([], [-1.0], 1.0, -1.0)
        with pytest.raises(TypeError, match="^p"):
            iir.impulse_invariance_zpk([], "x", 1.0, 1.0)


class TestSToZ:
    @pytest.mark.parametrize("fs", [1.0, 2.0, 44.1])
    def test_bilinear_zpk_and_tf(self, fs):
        z, p, k = ss.lp2bp_zpk(*ss.cheb1ap(4, 1.0), 3.0, 1.5)
        zd, pd, kd = iir.bilinear_zpk(z, p, k, fs)
        zr, pr, kr = ss.bilinear_zpk(z, p, k, fs)
        close(sorted_c(zd), sorted_c(zr), rtol=ORACLE, what="bilinear_zpk zeros vs scipy")
        close(sorted_c(pd), sorted_c(pr), rtol=ORACLE, what="bilinear_zpk poles vs scipy")
        close(kd, kr, rtol=ORACLE, what="bilinear_zpk gain vs scipy")
        b, a = ss.butter(4, 2.0, analog=True)
        for mine, ref in zip(iir.bilinear(b, a, fs), ss.bilinear(b, a, fs)):
            close(mine, ref, rtol=ORACLE, what="bilinear vs scipy")
        bd, ad, _ = ss.cont2discrete((b, a), 1 / fs, method="bilinear")
        close(iir.bilinear(b, a, fs)[1], ad, rtol=ORACLE, what="bilinear vs cont2discrete")
        # cont2discrete goes through a state-space realization: its own rounding is ~1e-9 of the tiny numerator
        close(iir.bilinear(b, a, fs)[0], bd[0], rtol=1e-8, what="bilinear numerator vs cont2discrete")

    def test_bilinear_maps_left_half_plane_into_disk(self):
        rng = np.random.default_rng(0)
        s = -rng.uniform(0, 10, 200) + 1j * rng.uniform(-50, 50, 200)
        _, pd, _ = iir.bilinear_zpk([], s, 1.0, 3.0)
        assert np.all(np.abs(pd) < 1)
        _, pd, _ = iir.bilinear_zpk([], 1j * s.imag, 1.0, 3.0)  # imaginary axis → unit circle
        close(np.abs(pd), np.ones(200), rtol=ORACLE, what="jΩ axis onto the unit circle")

    def test_prewarp(self):
        """After pre-warping, the digital filter's −3 dB point is exactly at the requested cutoff."""
        fs, fc = 1000.0, 300.0
        wc = iir.prewarp(fc, fs)
        assert float(wc) == pytest.approx(2 * fs * np.tan(np.pi * fc / fs), rel=1e-15)
        z, p, k = iir.bilinear_zpk(*iir.lp2lp_zpk(*iir.buttap(5), float(wc)), fs)
        b, a = iir.zpk2tf(z, p, k)
        _, h = iir.frequency_response(b, a, np.array([2 * np.pi * fc / fs]))
        assert abs(h[0]) == pytest.approx(1 / np.sqrt(2), rel=1e-12)
        with pytest.raises(ValueError, match="^f:"):
            iir.prewarp(600.0, fs)
        with pytest.raises(ValueError, match="^fs:"):
            iir.prewarp(100.0, -1.0)

    @pytest.mark.parametrize("name", ["butter", "cheby1"])
    @pytest.mark.parametrize("order", [1, 2, 3, 6, 9])
    @pytest.mark.parametrize("band", [("lowpass", 0.27), ("highpass", 0.6), ("bandpass", [0.3, 0.45])])
    def test_designs_match_scipy(self, name, order, band):
        bt, wn = band
        mine = getattr(iir, name)
        ref = getattr(ss, name)
        extra = () if name == "butter" else (0.8,)
        z, p, k = mine(order, *extra, wn, btype=bt)
        zr, pr, kr = ref(order, *extra, wn, bt, output="zpk")
        close(sorted_c(p), sorted_c(pr), rtol=ORACLE, what=f"{name} poles vs scipy")
        close(sorted_c(z), sorted_c(zr), rtol=ORACLE, what=f"{name} zeros vs scipy")
        close(k, kr, rtol=ORACLE, what=f"{name} gain vs scipy")
        close(mine(order, *extra, wn, btype=bt, output="sos"), ref(order, *extra, wn, bt, output="sos"), rtol=ORACLE,
              what=f"{name} sos vs scipy")
        b, a = mine(order, *extra, wn, btype=bt, output="ba")
        br, ar = ref(order, *extra, wn, bt)
        close(b, br, rtol=ORACLE, what=f"{name} b vs scipy")
        close(a, ar, rtol=ORACLE, what=f"{name} a vs scipy")

    @pytest.mark.parametrize("name", ["butter", "cheby1"])
    @pytest.mark.parametrize("order", [1, 2, 5, 8])
    @pytest.mark.parametrize("band", [("lowpass", 3.0), ("highpass", 0.4), ("bandpass", [2.0, 9.0]), ("bandstop", [0.5, 40.0])])
    def test_analog_designs_match_scipy(self, name, order, band):
        # analog=True: the s-domain filter (no pre-warping, no bilinear), wn in rad/s
        bt, wn = band
        extra = () if name == "butter" else (1.5,)
        z, p, k = getattr(iir, name)(order, *extra, wn, btype=bt, analog=True)
        zr, pr, kr = getattr(ss, name)(order, *extra, wn, bt, analog=True, output="zpk")
        close(sorted_c(p), sorted_c(pr), rtol=ORACLE, what=f"analog {name} poles vs scipy")
        close(sorted_c(z), sorted_c(zr), rtol=ORACLE, what=f"analog {name} zeros vs scipy")
        close(k, kr, rtol=ORACLE, what=f"analog {name} gain vs scipy")
        b, a = getattr(iir, name)(order, *extra, wn, btype=bt, analog=True, output="ba")
        br, ar = getattr(ss, name)(order, *extra, wn, bt, analog=True)
        close(b, br, rtol=ORACLE, what=f"analog {name} b vs scipy")
        close(a, ar, rtol=ORACLE, what=f"analog {name} a vs scipy")
        # the response at the band edges: −3 dB (Butterworth) or the ripple (Chebyshev I)
        edge = np.atleast_1d(np.asarray(wn, dtype=float))
        _, h = ss.freqs_zpk(z, p, k, worN=edge)
        want = 1 / np.sqrt(2) if name == "butter" else 10 ** (-1.5 / 20)
        np.testing.assert_allclose(np.abs(h), want, rtol=1e-10)

    @pytest.mark.parametrize("name", ["butter", "cheby1"])
    @pytest.mark.parametrize("order", [1, 3, 6])
    @pytest.mark.parametrize("wn, fs", [([0.3, 0.45], 2.0), ([100.0, 2000.0], 8000.0)])
    def test_digital_bandstop_matches_scipy(self, name, order, wn, fs):
        extra = () if name == "butter" else (0.8,)
        mine = getattr(iir, name)
        ref = getattr(ss, name)
        z, p, k = mine(order, *extra, wn, btype="bandstop", fs=fs)
        zr, pr, kr = ref(order, *extra, wn, "bandstop", fs=fs, output="zpk")
        close(sorted_c(p), sorted_c(pr), rtol=ORACLE, what=f"bandstop {name} poles vs scipy")
        close(sorted_c(z), sorted_c(zr), rtol=ORACLE, what=f"bandstop {name} zeros vs scipy")
        close(k, kr, rtol=ORACLE, what=f"bandstop {name} gain vs scipy")
        close(mine(order, *extra, wn, btype="bandstop", fs=fs, output="sos"), ref(order, *extra, wn, "bandstop", fs=fs, output="sos"),
              rtol=ORACLE, what=f"bandstop {name} sos vs scipy")
        # a notch: every zero on the unit circle at the image of the prewarped band's geometric
        # centre, θ0 = 2 atan(√(tan(π f1/fs) tan(π f2/fs))); at DC the prototype's DC gain
        theta0 = 2 * np.arctan(np.sqrt(np.tan(np.pi * wn[0] / fs) * np.tan(np.pi * wn[1] / fs)))
        close(np.abs(np.angle(z)), np.full(z.size, theta0), rtol=1e-12, what="bandstop notch angle")
        close(np.abs(z), np.ones(z.size), rtol=1e-12, what="bandstop zeros on the unit circle")
        h0 = k * np.prod(1 - z) / np.prod(1 - p)  # H(z = 1)
        assert abs(h0) == pytest.approx(1.0 if name == "butter" or order % 2 else 10 ** (-0.8 / 20), rel=1e-10)

    @pytest.mark.parametrize("wo, bw", [(1.0, 1.0), (3.0, 0.5), (1e3, 2e2)])
    def test_lp2bs_zpk(self, wo, bw):
        for proto in (ss.buttap(4), ss.cheb1ap(5, 0.5), (np.array([-2.0, -3.0 + 1j, -3.0 - 1j]), np.array([-1.0, -0.5 + 2j, -0.5 - 2j, -4.0]), 2.5)):
            z, p, k = iir.lp2bs_zpk(*proto, wo=wo, bw=bw)
            zr, pr, kr = ss.lp2bs_zpk(*proto, wo=wo, bw=bw)
            close(sorted_c(p), sorted_c(pr), rtol=ORACLE, what="lp2bs_zpk poles vs scipy")
            close(sorted_c(z), sorted_c(zr), rtol=ORACLE, what="lp2bs_zpk zeros vs scipy")
            close(k, kr, rtol=ORACLE, what="lp2bs_zpk gain vs scipy")
            # the definition H_bs(s) = H(bw s / (s² + wo²)) at a few points
            s_ = np.array([0.3j, 1.7j, 0.2 + 0.9j]) * wo
            sp = bw * s_ / (s_**2 + wo**2)
            h_proto = proto[2] * np.prod(sp[:, None] - proto[0], axis=1) / np.prod(sp[:, None] - proto[1], axis=1)
            h = k * np.prod(s_[:, None] - z, axis=1) / np.prod(s_[:, None] - p, axis=1)
            close(h, h_proto, rtol=1e-11, what="lp2bs_zpk = H(bw s/(s² + wo²))")
        with pytest.raises(ValueError, match="^p: a prototype pole at s = 0"):
            iir.lp2bs_zpk([], [0.0, -1.0], 1.0)
        with pytest.raises(ValueError, match="^bw"):
            iir.lp2bs_zpk([], [-1.0], 1.0, 1.0, -2.0)

    def test_analog_design_errors(self):
        with pytest.raises(ValueError, match="^fs: an analog design"):
            iir.butter(3, 2.0, analog=True, fs=10.0)
        with pytest.raises(ValueError, match="^output: expected 'zpk' or 'ba'"):
            iir.cheby1(3, 1.0, 2.0, analog=True, output="sos")
        with pytest.raises(ValueError, match="^wn: expected positive frequencies"):
            iir.butter(3, -2.0, analog=True)
        with pytest.raises(ValueError, match="^wn: expected two band edges"):
            iir.butter(3, 2.0, btype="bandstop", analog=True)
        with pytest.raises(ValueError, match="^wn: expected band edges"):
            iir.butter(3, [5.0, 2.0], btype="bandstop", analog=True)
        with pytest.raises(TypeError, match="^analog"):
            iir.butter(3, 0.2, analog="yes")
        z, p, k = iir.butter(3, 100.0, analog=True)  # no upper limit on an analog cutoff
        close(np.abs(p), np.full(3, 100.0), rtol=ORACLE, what="analog Butterworth poles on |s| = wn")

    def test_design_with_fs(self):
        close(iir.butter(4, 100.0, fs=1000.0, output="sos"), ss.butter(4, 100.0, fs=1000.0, output="sos"), rtol=ORACLE,
              what="butter(fs) vs scipy")

    @pytest.mark.parametrize("fs", [2.0, 10.0])
    def test_impulse_invariance(self, fs):
        """cont2discrete(method='impulse') and h_d[n] = T h_a(nT) (scipy.signal.impulse)."""
        b, a = [1.0, 0.5], [1.0, 1.2, 4.0, 2.0]  # distinct poles, one real, one complex pair
        bd, ad = iir.impulse_invariance(b, a, fs)
        bz, az, _ = ss.cont2discrete((b, a), 1 / fs, method="impulse")
        close(ad, az, rtol=ORACLE, what="impulse invariance denominator vs cont2discrete")
        close(bd, np.ravel(bz)[-bd.size:] if np.ravel(bz).size >= bd.size else bz, rtol=1e-11,
              what="impulse invariance numerator vs cont2discrete")
        T, n = 1 / fs, 60
        _, ha = ss.impulse((b, a), T=np.arange(n) * T)
        close(iir.impulse_response(bd, ad, n), T * ha, rtol=1e-8, what="h_d[n] = T h_a(nT) (scipy.signal.impulse)")
        # the pole map z = e^{sT}
        close(sorted_c(np.roots(ad)), sorted_c(np.exp(np.roots(a) * T)), rtol=1e-12, what="impulse invariance poles")

    def test_matched_z(self):
        fs = 8.0
        z, p, k = ss.lp2bp_zpk(*ss.buttap(3), 2.0, 1.0)
        zd, pd, kd = iir.matched_z(z, p, k, fs, gain_at=2.0)
        close(sorted_c(pd), sorted_c(np.exp(p / fs)), rtol=ORACLE, what="matched-z poles")
        close(sorted_c(zd), sorted_c(np.concatenate([np.exp(z / fs), -np.ones(3)])), rtol=ORACLE, what="matched-z zeros")
        e = np.exp(1j * 2.0 / fs)  # z = e^{iΩT} at Ω = 2 rad/s
        hd = kd * np.prod(e - zd) / np.prod(e - pd)  # zpk form: the tf form of 3 zeros at +1 and 3 at −1 loses digits
        _, ha = ss.freqs_zpk(z, p, k, worN=[2.0])
        assert abs(hd) == pytest.approx(abs(ha[0]), rel=1e-12)
        b, a = iir.zpk2tf(zd, pd, kd)
        assert abs(iir.frequency_response(b, a, np.array([2.0 / fs]))[1][0]) == pytest.approx(abs(ha[0]), rel=1e-9)
        # DC gain matched for a lowpass
        zd, pd, kd = iir.matched_z(*ss.buttap(4), fs)
        assert abs(np.prod(1 - zd) / np.prod(1 - pd) * kd) == pytest.approx(1.0, rel=1e-12)

    def test_errors(self):
        with pytest.raises(ValueError, match="^wn: expected frequencies"):
            iir.butter(3, 1.0)
        with pytest.raises(ValueError, match="^wn: expected frequencies"):
            iir.butter(3, 60.0, fs=100.0)
        with pytest.raises(ValueError, match="^wn: expected two band edges"):
            iir.butter(3, 0.3, btype="bandpass")
        with pytest.raises(ValueError, match="^wn: expected band edges"):
            iir.cheby1(3, 1.0, [0.5, 0.3], btype="bandpass")
        with pytest.raises(ValueError, match="^btype:"):
            iir.butter(3, 0.3, btype="notch")
        with pytest.raises(ValueError, match="^output:"):
            iir.butter(3, 0.3, output="ss")
        with pytest.raises(ValueError, match="^wn: expected finite"):
            iir.butter(3, np.nan)
        with pytest.raises(ValueError, match="^fs:"):
            iir.bilinear_zpk([], [-1.0], 1.0, 0.0)
        with pytest.raises(ValueError, match="^b: expected a strictly proper"):
            iir.impulse_invariance([1.0, 0.0], [1.0, 1.0], 1.0)
        with pytest.raises(ValueError, match="^a: expected a nonzero"):
            iir.bilinear([1.0], [0.0], 1.0)
        with pytest.raises(ValueError, match="^gain_at:"):
            iir.matched_z([], [-1.0], 1.0, 1.0, gain_at=10.0)
        with pytest.raises(ValueError, match="^z, p, gain_at:"):
            iir.matched_z([0.0], [-1.0], 1.0, 1.0)  # a highpass has no DC gain to match


# ---------------------------------------------------------------------------------------------
# IIR ↔ SSM
# ---------------------------------------------------------------------------------------------


def scalar_ssm(A, B, C, D, x):
    s, y = 0.0, np.empty_like(x)
    for t, xt in enumerate(x):
        s = A * s + B * xt  # s[t] = A s[t−1] + B x[t]
        y[t] = C * s + D * xt  # y[t] = C s[t] + D x[t]
    return y


class TestSSM:
    @pytest.mark.parametrize("seed", SEEDS)
    def test_scalar_mapping_and_paper_sign(self, seed):
        rng = np.random.default_rng(seed)
        A, B, C, D = rng.choice([-1, 1]) * rng.uniform(0.3, 0.9), rng.normal(), rng.normal(), rng.uniform(0.5, 2.0)
        x = rng.normal(size=200)
        b, a = iir.scalar_ssm_to_iir(A, B, C, D)
        close(b, [C * B + D, -A * D], rtol=0.0, what="scalar mapping coefficients")
        y = scalar_ssm(A, B, C, D, x)
        close(iir.tf_filter(b, a, x), y, rtol=ORACLE, what="scalar SSM = first-order IIR (b1 = −AD)")
        paper = ss.lfilter([C * B + D, +A * D], a, x)  # P-31 as printed
        assert np.max(np.abs(paper - y)) / np.max(np.abs(y)) > 0.1

    @pytest.mark.parametrize("seed", SEEDS)
    @pytest.mark.parametrize("kind", ["complex", "real"])
    def test_biquad_ssm_round_trip(self, seed, kind):
        rng = np.random.default_rng(seed)
        b, a = random_biquad(rng, kind=kind)
        lam, B, C, D = iir.biquad_to_ssm(b, a)
        r, p, kk = ss.residuez(b, a)
        order = [int(np.argmin(np.abs(p - l))) for l in lam]
        close(lam, p[order], rtol=1e-12, what="biquad_to_ssm modes vs residuez")
        close(C * B, r[order], rtol=1e-11, what="biquad_to_ssm residues vs residuez")
        close(D, kk[0], rtol=ORACLE, what="biquad_to_ssm direct term vs residuez")
        bb, aa = iir.ssm_to_biquad(lam, B, C, D)
        close(bb, b / a[0], rtol=1e-12, what="ssm_to_biquad(biquad_to_ssm) b")
        close(aa, a / a[0], rtol=1e-12, what="ssm_to_biquad(biquad_to_ssm) a")
        x = rng.normal(size=(2, 150, 3))
        ref = ss.lfilter(b, a, x, axis=-2)
        close(iir.diagonal_ssm_filter(lam, B, C, D, x), ref, rtol=1e-12, what="diagonal SSM vs lfilter")
        close(iir.diagonal_ssm_filter(lam, B, C, D, x, scan="associative"), ref, rtol=1e-12,
              what="diagonal SSM (associative scan) vs lfilter")
        close(iir.diagonal_ssm_filter_loop(lam, B, C, D, x), ref, rtol=1e-12, what="diagonal SSM loop vs lfilter")

    def test_ssm_to_biquad_formula_against_recurrence(self):
        """A complex-conjugate diagonal SSM (AFA-like mode λ = e^{(−μ + iω)Δt}) is a real biquad."""
        lam1 = np.exp((-0.1 + 0.7j) * 1.0)
        lam = np.array([lam1, np.conj(lam1)])
        Bv = np.array([0.3 + 0.2j, 0.3 - 0.2j])
        Cv = np.array([1.0 - 0.5j, 1.0 + 0.5j])
        D = 0.4
        b, a = iir.ssm_to_biquad(lam, Bv, Cv, D)
        x = np.random.default_rng(0).normal(size=300)
        close(ss.lfilter(b, a, x), iir.diagonal_ssm_filter_loop(lam, Bv, Cv, D, x), rtol=ORACLE,
              what="ssm_to_biquad vs recurrence")
        close(iir.diagonal_ssm_filter(lam, Bv, Cv, D, x), iir.diagonal_ssm_filter_loop(lam, Bv, Cv, D, x), rtol=SELF,
              what="diagonal_ssm_filter loop twin")

    @pytest.mark.parametrize("n", [1, 63, 64, 65, 500])
    def test_chunked_scan_lengths(self, n):
        rng = np.random.default_rng(n)
        lam = np.array([0.9 * np.exp(0.3j), 0.5, -0.7])
        B, C = rng.normal(size=3) + 1j * rng.normal(size=3), rng.normal(size=3) + 1j * rng.normal(size=3)
        x = rng.normal(size=(2, n, 3))
        close(iir.diagonal_ssm_filter(lam, B, C, 0.3, x), iir.diagonal_ssm_filter_loop(lam, B, C, 0.3, x), rtol=SELF,
              what="diagonal_ssm_filter loop twin")
        close(iir.diagonal_ssm_filter(lam, B, C, 0.3, x, scan="associative"),
              iir.diagonal_ssm_filter_loop(lam, B, C, 0.3, x), rtol=SELF, what="diagonal_ssm_filter loop twin")

    @pytest.mark.parametrize("n", [0, 23, 24, 25, 30_001])
    def test_chunked_scan_many_modes_long(self, n):
        """m = 8 modes (a 16-state real form, K = 64), undamped and lightly damped ones among them,
        non-conjugate modes and a real x with batch axes: the chunked path vs the associative scan
        (an independent algorithm) and, when short, the loop."""
        rng = np.random.default_rng(n + 7)
        lam = np.concatenate([np.exp(1j * rng.uniform(0, 3, 2)), 0.999 * np.exp(1j * rng.uniform(0, 3, 3)),
                              rng.uniform(-0.9, 0.9, 3)])
        B, C = rng.normal(size=8) + 1j * rng.normal(size=8), rng.normal(size=8) + 1j * rng.normal(size=8)
        x = rng.normal(size=(2, n, 2))
        y = iir.diagonal_ssm_filter(lam, B, C, -0.2, x)
        assert y.shape == x.shape and y.dtype == np.float64
        close(y, iir.diagonal_ssm_filter(lam, B, C, -0.2, x, scan="associative"), rtol=ORACLE * 10,
              what="diagonal_ssm_filter chunked vs associative")
        if n < 1000:
            close(y, iir.diagonal_ssm_filter_loop(lam, B, C, -0.2, x), rtol=SELF, what="diagonal_ssm_filter loop twin")

    def test_focus_all_pole(self):
        """residuez([1], [1, θ0, θ1]): residues p_i/(p_i − p_j), no direct term."""
        lam, B, C, D = iir.biquad_to_ssm([1, 0, 0], [1, 0.6, 0.5])
        close(C, lam / (lam - lam[::-1]), rtol=ORACLE, what="Focus residues p_i/(p_i − p_j)")
        assert D == 0.0

    def test_errors(self):
        with pytest.raises(ValueError, match="^a: expected distinct poles"):
            iir.biquad_to_ssm([1, 0, 0], [1, 1.0, 0.25])
        with pytest.raises(ValueError, match="^a: expected a\\[2\\] != 0"):
            iir.biquad_to_ssm([1, 0, 0], [1, 0.5, 0.0])
        with pytest.raises(ValueError, match="^lam: expected a real or complex-conjugate"):
            iir.ssm_to_biquad([0.5j, 0.3], [1, 1], [1, 1], 0.0)
        with pytest.raises(ValueError, match="^B, C: expected residues"):
            iir.ssm_to_biquad([0.5j, -0.5j], [1, 1], [1j, 1j], 0.0)
        with pytest.raises(ValueError, match="^lam: expected shape"):
            iir.ssm_to_biquad([0.5, 0.2, 0.1], [1, 1], [1, 1], 0.0)
        with pytest.raises(ValueError, match="^B: expected shape"):
            iir.diagonal_ssm_filter([0.5, 0.2], [1], [1, 1], 0.0, np.ones(3))
        with pytest.raises(ValueError, match="^D: expected 0 dimensions"):
            iir.diagonal_ssm_filter_loop([0.5], [1], [1], [0.0, 1.0], np.ones(3))
        with pytest.raises(ValueError, match="^scan:"):
            iir.diagonal_ssm_filter([0.5], [1], [1], 0.0, np.ones(3), scan="serial")
        with pytest.raises(ValueError, match="^A: expected finite"):
            iir.scalar_ssm_to_iir(np.nan, 1.0, 1.0, 0.0)


class TestPolesZerosAndExtremes:
    def test_response_on_a_pole_is_inf(self):
        for f in (iir.frequency_response, iir.frequency_response_loop):
            _, h = f([1.0], [1.0, -1.0], np.array([0.0, 1.0]))
            assert h[0] == np.inf and np.isfinite(h[1])
        _, h = iir.analog_frequency_response([1.0], [1.0, 0.0, 1.0], np.array([1.0, -1.0, 2.0]))
        assert h[0] == np.inf and h[1] == np.inf and np.isfinite(h[2])

    def test_common_root_gives_the_limit(self):
        # B = (1 − x), A = (1 − x)(1 − x/2) with x = e^{−iω}: H = 1/(1 − x/2), = 2 at ω = 0
        b, a = np.array([1.0, -1.0, 0.0]), np.array([1.0, -1.5, 0.5])
        w = np.array([0.0, 0.4, 2.0])
        ref = 1.0 / (1.0 - 0.5 * np.exp(-1j * w))
        for f in (iir.frequency_response, iir.frequency_response_loop):
            assert_close(f(b, a, w)[1], ref, rtol=ORACLE, what=f"{f.__name__}, common root")
        # a section with b = 0 makes the cascade the zero filter, even on its double pole at z = 1
        _, h = iir.sos_frequency_response(np.array([[0.0, 0.0, 0.0, 1.0, -2.0, 1.0]]), np.array([0.0, 1.0]))
        np.testing.assert_array_equal(h, 0.0)

    def test_analog_response_at_extreme_frequencies(self):
        b, a = np.array([1.0, 0.3]), np.array([1.0, 1.4, 1.0, 0.2])
        w = np.linspace(-5.0, 5.0, 41)
        assert_close(iir.analog_frequency_response(b, a, w)[1], ss.freqs(b, a, w)[1], rtol=ORACLE, what="vs freqs")
        _, h = iir.analog_frequency_response(b, a, np.array([1e300, -1e300, 1e150]))
        assert np.all(np.isfinite(h)) and np.all(np.abs(h) < 1e-290)  # H(iΩ) ~ b0/(a0 (iΩ)²) → 0

    def test_lp2hp_zero_at_origin(self):
        z, p, k = np.array([0.0, -2.0]), np.array([-0.5 + 0.8j, -0.5 - 0.8j, -1.0]), 1.5
        zh, ph, kh = iir.lp2hp_zpk(z, p, k, wo=2.0)
        s = 1j * np.array([0.3, 1.0, 4.0])
        h_lp = k * np.prod(2.0 / s[:, None] - z, axis=1) / np.prod(2.0 / s[:, None] - p, axis=1)
        h_hp = kh * np.prod(s[:, None] - zh, axis=1) / np.prod(s[:, None] - ph, axis=1)
        assert_close(h_hp, h_lp, rtol=ORACLE, what="H_hp(s) = H_lp(wo/s) with a zero at s = 0")
        with pytest.raises(ValueError, match="^p: a pole at s = 0"):
            iir.lp2hp_zpk([], [0.0, -1.0], 1.0)

    def test_design_overflow_is_refused_by_name(self):
        for call, name in (
            (lambda: iir.cheb1ap(3, 1e300), "rp"), (lambda: iir.cheb1ap(3, 1e-300), "rp"),
            (lambda: iir.lp2lp_zpk([], [-1.0, -2.0], 1.0, wo=1e300), "wo"),  # k wo² overflows
            (lambda: iir.lp2bp_zpk([], [-1.0, -2.0], 1.0, bw=1e300), "bw"),
            (lambda: iir.bilinear([1.0], [1.0, 1.4, 1.0], 1e300), "fs"),
        ):
            with pytest.raises(ValueError, match=rf"^{name} \(\|{name}\| from"):
                call()
        with pytest.raises(ValueError, match="^k: expected a nonzero gain"):
            iir.matched_z([], [-1.0], 0.0, 10.0)


def test_sos2zpk_zero_numerator_section_names_sos():
    """A section with b = 0 makes the cascade identically zero: refused by name, not by a section's 'b'."""
    sos = np.array([[1.0, 0.5, 0.0, 1.0, -0.5, 0.0], [0.0, 0.0, 0.0, 1.0, 0.2, 0.0]])
    with pytest.raises(ValueError, match=r"^sos: section 1 has a zero numerator"):
        iir.sos2zpk(sos)


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _two_prod(a, b):
    """a·b = p + e exactly (Dekker 1971, Veltkamp splitting)."""
    p = a * b
    ta, tb = 134217729.0 * a, 134217729.0 * b
    ah, bh = ta - (ta - a), tb - (tb - b)
    al, bl = a - ah, b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def double_double_biquad(b, a, x):
    """(13.5) for a biquad in double-double arithmetic (pairs of Python floats): a reference that
    needs no extended precision from the platform. a[0] must be 1."""

    def add(x, y):
        s, e = _two_sum(x[0], y[0])
        return _two_sum(s, e + (x[1] + y[1]))

    def scale(c, v):
        p, e = _two_prod(c, v[0])
        return _two_sum(p, e + c * v[1])

    b0, b1, b2 = (float(v) for v in b)
    m1, m2 = -float(a[1]), -float(a[2])
    s1 = s2 = (0.0, 0.0)
    y = np.empty(len(x))
    for n, xn in enumerate(np.asarray(x, dtype=float).tolist()):
        xd = (xn, 0.0)
        yn = add(scale(b0, xd), s1)
        s1, s2 = add(add(scale(b1, xd), scale(m1, yn)), s2), add(scale(b2, xd), scale(m2, yn))
        y[n] = yn[0]
    return y


class TestPlatformWithoutExtendedPrecision:
    """Where np.longdouble is float64 (MSVC on Windows, macOS arm64) the block algorithm would carry
    the float64 rounding of A^K, a systematic error that grows linearly in N; there the filters run
    the sample recursion (iir.EXTENDED_PRECISION). Simulated here by replacing np.longdouble with
    float64 in refimpl._scan and clearing the switch."""

    B, A = np.array([0.3, -0.2, 0.5]), np.array([1.0, -2 * np.cos(0.05), 1.0])  # poles e^{±0.05i}

    @pytest.fixture
    def float64_platform(self, monkeypatch):
        from refimpl import _scan

        monkeypatch.setattr(_scan, "_wide", lambda dtype: np.complex128 if np.dtype(dtype).kind == "c" else np.float64)
        monkeypatch.setattr(iir, "EXTENDED_PRECISION", False)

    def test_switch_reads_the_platform(self):
        assert iir.EXTENDED_PRECISION == (np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant)

    def test_double_double_reference(self):
        """The reference itself: it agrees with an np.longdouble recursion where that is wider."""
        if not iir.EXTENDED_PRECISION:
            pytest.skip("np.longdouble is float64 here")
        x = np.random.default_rng(13).normal(size=3000)
        ref = double_double_biquad(self.B, self.A, x)
        assert max_rel(extended_tf(self.B, self.A, x), ref) < 1e-15  # both rounded to float64: an ulp apart at most

    def test_filters_run_the_recursion(self, float64_platform):
        rng = np.random.default_rng(21)
        x, zi = rng.normal(size=(2, 700, 3)), rng.normal(size=(2, 2, 3))
        y, zf = iir.biquad_filter(self.B, self.A, x, zi)
        y_ref, zf_ref = ss.lfilter(self.B, self.A, x, axis=-2, zi=zi)
        assert np.array_equal(y, y_ref) and np.array_equal(zf, zf_ref)
        b6, a6 = ss.butter(4, 0.2)
        assert np.array_equal(iir.tf_filter(b6, a6, x[0, :, 0]), ss.lfilter(b6, a6, x[0, :, 0]))
        sos = ss.butter(8, [0.1, 0.2], "bandpass", output="sos")
        zs = rng.normal(size=(sos.shape[0], 2))
        y_s, zf_s = iir.sos_filter(sos, x[0, :, 0], zs)
        y_sr, zf_sr = ss.sosfilt(sos, x[0, :, 0], zi=zs)
        assert np.array_equal(y_s, y_sr) and np.array_equal(zf_s, zf_sr)

    def test_accuracy_is_the_recursion_s(self, float64_platform):
        """Against the double-double reference: the undamped resonator keeps the sample
        recursion's accuracy; the block algorithm forced on this platform would not."""
        x = np.random.default_rng(13).normal(size=40_000)
        ref = double_double_biquad(self.B, self.A, x)

        def err(y):
            return np.linalg.norm(y - ref) / np.linalg.norm(ref)

        e_loop = err(iir.biquad_filter_loop(self.B, self.A, x))
        e_filter = err(iir.biquad_filter(self.B, self.A, x))
        assert e_filter <= 2 * e_loop and e_filter < 2e-13, (e_filter, e_loop)
        iir.EXTENDED_PRECISION = True  # restored by the fixture: the block algorithm with float64 powers
        e_forced = err(iir.biquad_filter(self.B, self.A, x))
        assert e_forced > 20 * e_loop, (e_forced, e_loop)

    def test_undamped_accuracy_on_this_platform(self):
        """Whatever this platform is, biquad_filter is as accurate as the float64 recursion."""
        x = np.random.default_rng(13).normal(size=40_000)
        ref = double_double_biquad(self.B, self.A, x)

        def err(y):
            return np.linalg.norm(y - ref) / np.linalg.norm(ref)

        assert err(iir.biquad_filter(self.B, self.A, x)) <= 2 * err(iir.biquad_filter_loop(self.B, self.A, x))


class TestBlockAccuracyBound:
    """Below GROWTH_MAX the block algorithm's error can exceed lfilter's by ~20× (chapter 13's
    sweep: 23×), but it stays below 1e-12 of max |y|: the tolerance to validate a kernel with."""

    @pytest.mark.parametrize("design", [("cheby1", (6, 1, 0.166, "highpass")), ("butter", (8, 0.279, "highpass")),
                                        ("ellip", (6, 1, 60, 0.208, "highpass"))])
    def test_worst_designs_within_1e_12(self, design):
        name, args = design
        b, a = getattr(ss, name)(*args)
        x = np.random.default_rng(131).normal(size=4000)
        ref = extended_tf(b, a, x)
        e_tf, e_lf = max_rel(iir.tf_filter(b, a, x), ref), max_rel(ss.lfilter(b, a, x), ref)
        assert e_tf <= 1e-12 and e_tf <= 30 * e_lf + 1e-15, (e_tf, e_lf)
