"""Tests of the shared helpers: input validation (:mod:`refimpl._validate`), the tolerance
policy (:mod:`refimpl._testing`) and the associative scan (:mod:`refimpl._scan`)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from refimpl._scan import (_STATE_SCAN_BASE, _flush, _level, _super_block, column_levels, column_scan, linear_scan,
                           linear_scan_loop, matrix_powers, scan_levels, state_scan, state_scan_loop)
from refimpl._testing import (
    DTYPE_RTOL,
    ODE,
    ORACLE,
    RATIO_RULE_FACTOR,
    SELF,
    assert_close,
    max_abs_error,
    mc_band,
    ratio_bound,
    ratio_rule,
    rel_error,
)
from refimpl._validate import (
    as_array,
    as_complex_array,
    as_positive_scalar,
    as_real_array,
    as_rng,
    check_hermitian_psd,
    check_nonnegative,
    check_option,
    check_shape,
    check_square,
    check_times,
)

NOT_NUMERIC = ["abc", b"abc", None, {"a": 1}, [1.0, "a"], [[1.0, 2.0], [3.0]], object()]


# ---------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------


class TestAsRealArray:
    def test_dtype_and_values(self):
        for x in (3, [1, 2], np.arange(4, dtype=np.int32), np.float32(0.5), [True, False], np.array([1.5, 2.5])):
            out = as_real_array(x, "x")
            assert out.dtype == np.float64
            np.testing.assert_array_equal(out, np.asarray(x, dtype=np.float64))

    def test_copies_input(self):
        x = np.array([1.0, 2.0])
        out = as_real_array(x, "x")
        out[0] = 99.0
        assert x[0] == 1.0

    def test_complex(self):
        with pytest.raises(TypeError, match=r"^tau: expected real values"):
            as_real_array([1.0, 1.0 + 1e-300j], "tau")
        out = as_real_array(np.array([1.0 + 0j, -2.0 + 0j]), "tau")  # zero imaginary part: accepted
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, [1.0, -2.0])

    def test_ndim(self):
        assert as_real_array([1.0], "x", ndim=1).shape == (1,)
        assert as_real_array(np.ones((2, 2)), "x", ndim=(1, 2)).shape == (2, 2)
        with pytest.raises(ValueError, match=r"^x: expected 1 dimensions, got shape \(2, 2\)"):
            as_real_array(np.ones((2, 2)), "x", ndim=1)
        with pytest.raises(ValueError, match=r"^x: expected 1 or 2 dimensions, got shape \(\)"):
            as_real_array(1.0, "x", ndim=(1, 2))

    def test_finite(self):
        for bad in ([1.0, np.nan], [np.inf], -np.inf):
            with pytest.raises(ValueError, match=r"^x: expected finite values"):
                as_real_array(bad, "x")
        out = as_real_array([1.0, np.nan], "x", finite=False)
        assert np.isnan(out[1])
        assert as_real_array([], "x").shape == (0,)

    def test_finite_check_survives_an_overflowing_sum(self):
        # the fast path forms Σ x²; finite entries whose squares overflow must still pass (the
        # entry-by-entry check decides), and one bad entry among them must still be counted
        for ok in ([1e308, 1e308], [1e308, 1e308, -1e308, -1e308, -1e308]):
            np.testing.assert_array_equal(as_real_array(ok, "x"), ok)
        with pytest.raises(ValueError, match=r"^x: expected finite values, got 1 NaN/inf"):
            as_real_array([1e308, 1e308, np.nan], "x")
        with pytest.raises(ValueError, match=r"^x: expected finite values, got 2 NaN/inf"):
            as_complex_array([1e308, np.inf * 1j, complex(np.nan, 0)], "x")

    def test_copy_false_returns_float64_input_as_is(self):
        x = np.arange(6.0).reshape(2, 3)
        assert as_real_array(x, "x", copy=False) is x
        assert not np.shares_memory(as_real_array(x, "x"), x)  # the default copies
        y = as_real_array(np.arange(3), "x", copy=False)  # integers must still be converted
        assert y.dtype == np.float64
        z = np.arange(4.0) + 1j
        assert as_array(z, "z", copy=False) is z and as_complex_array(z, "z", copy=False) is z
        assert as_array(x, "x", copy=False) is x
        assert not np.shares_memory(as_array(z, "z"), z) and not np.shares_memory(as_array(x, "x"), x)
        assert as_array(np.arange(3), "x", copy=False).dtype == np.float64
        assert as_complex_array(x, "x", copy=False).dtype == np.complex128  # a real input is cast

    @pytest.mark.parametrize("x", NOT_NUMERIC)
    def test_not_numeric(self, x):
        with pytest.raises(TypeError, match=r"^arg:"):
            as_real_array(x, "arg")


class TestAsComplexArray:
    def test_dtype_and_values(self):
        for x in (1, [1.0, 2.0], np.array([1 + 2j]), np.complex64(1j)):
            out = as_complex_array(x, "x")
            assert out.dtype == np.complex128
            np.testing.assert_array_equal(out, np.asarray(x, dtype=np.complex128))

    def test_copies_input(self):
        x = np.array([1.0 + 1j])
        out = as_complex_array(x, "x")
        out[0] = 0
        assert x[0] == 1.0 + 1j

    def test_ndim_and_finite(self):
        with pytest.raises(ValueError, match=r"^z: expected 2 dimensions"):
            as_complex_array([1j], "z", ndim=2)
        with pytest.raises(ValueError, match=r"^z: expected finite values, got 1 NaN/inf"):
            as_complex_array([1j, complex(0, np.inf)], "z")
        assert np.isnan(as_complex_array([np.nan], "z", finite=False)[0])

    @pytest.mark.parametrize("x", NOT_NUMERIC)
    def test_not_numeric(self, x):
        with pytest.raises(TypeError, match=r"^z:"):
            as_complex_array(x, "z")


class TestAsArray:
    def test_dtype_rule(self):
        assert as_array([1, 2], "x").dtype == np.float64
        assert as_array(np.float32(1), "x").dtype == np.float64
        out = as_array([1.0, 2j], "x")
        assert out.dtype == np.complex128
        np.testing.assert_array_equal(out, [1.0, 2j])
        # a complex array with zero imaginary parts stays complex: nothing is dropped
        assert as_array(np.array([1.0 + 0j]), "x").dtype == np.complex128

    def test_errors(self):
        with pytest.raises(ValueError, match=r"^x: expected 1 dimensions"):
            as_array([[1.0]], "x", ndim=1)
        with pytest.raises(ValueError, match=r"^x: expected finite"):
            as_array([1j, np.nan], "x")
        with pytest.raises(TypeError, match=r"^x:"):
            as_array("x", "x")


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


class TestCheckShape:
    def test_accepts(self):
        check_shape(np.zeros((2, 3)), "x", (2, 3))
        check_shape(np.zeros((2, 3)), "x", (None, 3))
        check_shape(np.zeros((5,)), "x", (None,))
        check_shape(np.zeros(()), "x", ())

    def test_rejects(self):
        with pytest.raises(ValueError, match=r"^x: expected shape \(any, 4\), got shape \(2, 3\)"):
            check_shape(np.zeros((2, 3)), "x", (None, 4))
        with pytest.raises(ValueError, match=r"^x: expected shape \(3,\), got shape \(3, 1\)"):
            check_shape(np.zeros((3, 1)), "x", (3,))
        with pytest.raises(ValueError, match=r"^x: expected shape \(\), got shape \(1,\)"):
            check_shape(np.zeros(1), "x", ())


class TestCheckNonnegative:
    def test_accepts(self):
        check_nonnegative(np.array([0.0, -0.0, 1e-300, 5.0]), "sigma2")
        check_nonnegative(np.array([]), "sigma2")

    def test_rejects(self):
        with pytest.raises(ValueError, match=r"^sigma2: expected values >= 0, got minimum -1e-300"):
            check_nonnegative(np.array([1.0, -1e-300]), "sigma2")
        with pytest.raises(TypeError, match=r"^sigma2: expected real"):
            check_nonnegative(np.array([1.0 + 0j]), "sigma2")


class TestCheckSquare:
    def test(self):
        check_square(np.zeros((3, 3)), "A")
        check_square(np.zeros((0, 0)), "A")
        for shape in [(2, 3), (3,), (2, 2, 2), ()]:
            with pytest.raises(ValueError, match=r"^A: expected a square matrix"):
                check_square(np.zeros(shape), "A")


class TestCheckHermitianPsd:
    def test_accepts_psd_up_to_roundoff(self):
        rng = np.random.default_rng(0)
        B = rng.normal(size=(4, 2)) + 1j * rng.normal(size=(4, 2))
        P = B @ B.conj().T  # rank 2: two eigenvalues are 0 up to round-off
        check_hermitian_psd(P, "P")
        P_noisy = P + 1e-14 * np.abs(P).max() * rng.normal(size=P.shape)  # slightly non-Hermitian
        check_hermitian_psd(P_noisy, "P")
        w, v = np.linalg.eigh(P)
        w[0] = -1e-13 * w.max()  # a round-off-size negative eigenvalue
        check_hermitian_psd((v * w) @ v.conj().T, "P")
        check_hermitian_psd(np.zeros((3, 3)), "P")
        check_hermitian_psd(np.zeros((0, 0)), "P")
        check_hermitian_psd(np.eye(2) * 1e-300, "P")

    def test_rejects_indefinite(self):
        with pytest.raises(ValueError, match=r"^Q: expected a positive semidefinite matrix.*-1"):
            check_hermitian_psd(np.array([[1.0, 2.0], [2.0, 1.0]]), "Q")
        w, v = np.linalg.eigh(np.array([[2.0, 1.0], [1.0, 2.0]]))
        with pytest.raises(ValueError, match=r"^Q: expected a positive semidefinite"):
            check_hermitian_psd((v * np.array([-1e-6, 3.0])) @ v.T, "Q")

    def test_rejects_non_hermitian(self):
        with pytest.raises(ValueError, match=r"^Q: expected a symmetric matrix"):
            check_hermitian_psd(np.array([[1.0, 0.5], [0.4, 1.0]]), "Q")
        with pytest.raises(ValueError, match=r"^Q: expected a Hermitian matrix"):
            check_hermitian_psd(np.array([[1.0, 0.5j], [0.5j, 1.0]]), "Q")  # complex symmetric
        with pytest.raises(ValueError, match=r"^Q: expected a square matrix"):
            check_hermitian_psd(np.ones((2, 3)), "Q")


class TestCheckTimes:
    def test_accepts(self):
        check_times(np.array([0.0, 1e-12, 1.0, 1e6]), "t")
        check_times(np.array([3.0]), "t")

    @pytest.mark.parametrize("t", [[0.0, 1.0, 1.0], [0.0, 2.0, 1.0], [1.0, 0.0]])
    def test_not_increasing(self, t):
        with pytest.raises(ValueError, match=r"^t: expected strictly increasing time stamps, got t\[\d\]"):
            check_times(np.array(t), "t")

    def test_names_the_offending_pair(self):
        with pytest.raises(ValueError, match=r"t\[2\] = 5 >= t\[3\] = 4"):
            check_times(np.array([0.0, 1.0, 5.0, 4.0, 6.0]), "t")

    def test_shape(self):
        with pytest.raises(ValueError, match=r"^times: expected time stamps of shape \(N,\)"):
            check_times(np.zeros((2, 2)), "times")


class TestCheckOption:
    def test(self):
        check_option("causal", "mask", ("causal", "none"))
        with pytest.raises(ValueError, match=r"^mask: expected one of \('causal', 'none'\), got 'Causal'"):
            check_option("Causal", "mask", ["causal", "none"])
        for bad in (None, 1, b"causal"):
            with pytest.raises(TypeError, match=r"^mask: expected one of"):
                check_option(bad, "mask", ("causal",))


class TestAsPositiveScalar:
    def test_accepts(self):
        for x, expected in [(2, 2.0), (0.5, 0.5), (np.float32(0.25), 0.25), (np.int64(3), 3.0), (np.array(1.5), 1.5)]:
            out = as_positive_scalar(x, "x")
            assert type(out) is float and out == expected
        assert as_positive_scalar(0.0, "x", strict=False) == 0.0
        assert as_positive_scalar(0, "x", strict=False) == 0.0

    def test_rejects_values(self):
        for bad in (0.0, 0, -1.0, np.inf, np.nan, -np.inf):
            with pytest.raises(ValueError, match=r"^x: expected a finite value > 0"):
                as_positive_scalar(bad, "x")
        for bad in (-1e-300, np.inf, np.nan):
            with pytest.raises(ValueError, match=r"^x: expected a finite value >= 0"):
                as_positive_scalar(bad, "x", strict=False)

    def test_rejects_types(self):
        for bad in (True, False, np.bool_(True), "1", None, 1j, [1.0], np.array([1.0]), np.array(1j)):
            with pytest.raises(TypeError, match=r"^x: expected a real scalar"):
                as_positive_scalar(bad, "x")


class TestAsRng:
    def test_int_seed(self):
        a, b = as_rng(42), np.random.default_rng(42)
        assert isinstance(a, np.random.Generator)
        np.testing.assert_array_equal(a.standard_normal(5), b.standard_normal(5))
        np.testing.assert_array_equal(as_rng(np.int64(7)).random(3), np.random.default_rng(7).random(3))

    def test_generator_is_passed_through(self):
        g = np.random.default_rng(1)
        assert as_rng(g) is g

    def test_none(self):
        # fresh entropy: a new Generator each call (its stream is not reproducible by design)
        g1, g2 = as_rng(None), as_rng(None)
        assert isinstance(g1, np.random.Generator) and isinstance(g2, np.random.Generator)
        assert g1 is not g2

    @pytest.mark.parametrize("bad", [1.0, 0.5, "1", True, False, np.random.RandomState(0), [1, 2]])
    def test_rejects(self, bad):
        with pytest.raises(TypeError, match=r"^rng: expected a numpy.random.Generator"):
            as_rng(bad)


# ---------------------------------------------------------------------------------------------
# refimpl._testing
# ---------------------------------------------------------------------------------------------


class TestTolerancePolicy:
    def test_tiers(self):
        # DESIGN.md: self-consistency <= 1e-10, against SciPy/closed forms <= 1e-12.
        assert SELF <= 1e-10 and ORACLE <= 1e-12 and ORACLE < SELF < ODE
        assert DTYPE_RTOL["float64"] <= SELF
        assert DTYPE_RTOL["float32"] < DTYPE_RTOL["float16"] < DTYPE_RTOL["bfloat16"]

    def test_max_abs_error(self):
        assert max_abs_error([1.0, 2.0], [1.0, 2.5]) == 0.5
        assert max_abs_error([], []) == 0.0
        assert max_abs_error([np.inf, 1.0], [np.inf, 1.0]) == 0.0  # equal infinities agree
        assert max_abs_error([np.nan, 1.0], [np.nan, 1.0]) == 0.0  # NaN where NaN is expected
        assert max_abs_error([np.nan], [1.0]) == np.inf
        assert max_abs_error([np.inf], [1.0]) == np.inf
        assert max_abs_error([-np.inf], [np.inf]) == np.inf
        assert max_abs_error([1j], [0.0]) == 1.0

    def test_rel_error_is_normwise(self):
        # the tiny entry is off by 10 % elementwise, but norm-wise the error is 1e-21
        assert rel_error([1.0, 1.1e-20], [1.0, 1e-20]) == pytest.approx(1e-21, rel=1e-6)
        assert rel_error([2.0, 0.0], [1.0, 0.0]) == 1.0
        assert rel_error([3.0, -3.0], [0.0, 0.0]) == 3.0  # desired identically zero: absolute error
        assert rel_error([], []) == 0.0

    def test_assert_close_passes(self):
        err = assert_close([1.0, 2.0 + 1e-12], [1.0, 2.0], rtol=1e-12)
        assert err == pytest.approx(0.5e-12, rel=1e-3)
        assert assert_close(np.ones((2, 2)), np.ones((2, 2))) == 0.0
        assert_close([1.0, 1e-3], [1.0, 0.0], rtol=1e-12, atol=1e-3)  # the absolute criterion
        assert_close([np.inf, 1.0], [np.inf, 1.0], rtol=0.0)

    def test_assert_close_fails_with_the_error(self):
        with pytest.raises(AssertionError, match=r"^Σ differ: norm-wise rel error 5\.000e-11 > rtol 1\.0e-12"):
            assert_close([1.0, 2.0 + 1e-10], [1.0, 2.0], rtol=1e-12, what="Σ")
        with pytest.raises(AssertionError, match=r"max abs error 1\.000e-01"):
            assert_close([1.1], [1.0])
        with pytest.raises(AssertionError, match=r"^values differ"):
            assert_close([np.nan], [1.0], rtol=1.0)
        with pytest.raises(AssertionError, match=r"^F: shape \(2,\) != expected \(2, 1\)"):
            assert_close(np.ones(2), np.ones((2, 1)), what="F")
        with pytest.raises(AssertionError):
            assert_close(np.ones(3), np.ones(1))  # no broadcasting

    def test_mc_band(self):
        assert mc_band(100) == pytest.approx(0.5)
        assert mc_band(10000, n_sigma=3.0) == pytest.approx(0.03)
        # a 5σ band of 4000 standard normal means of n = 400 draws contains them all
        rng = np.random.default_rng(2)
        means = rng.standard_normal((4000, 400)).mean(axis=1)
        assert np.all(np.abs(means) <= mc_band(400))
        assert np.mean(np.abs(means) <= mc_band(400, n_sigma=1.0)) == pytest.approx(0.6827, abs=0.03)

    def test_ratio_rule(self):
        assert RATIO_RULE_FACTOR == 2.0
        assert ratio_rule(2e-4, 1e-4)
        assert not ratio_rule(2.01e-4, 1e-4)
        assert ratio_rule(3e-4, 1e-4, factor=3.0)
        assert ratio_rule(0.0, 0.0)  # exact kernel vs exact plain implementation
        assert not ratio_rule(1e-300, 0.0)
        # the floor (the oracle's ulps · ε_dtype): below it the plain error does not lower the bound
        assert ratio_bound(1e-9, level=1e-7) == 2e-7 and ratio_bound(1e-5, level=1e-7) == 2e-5
        assert ratio_rule(1.5e-7, 0.0, level=1e-7) and not ratio_rule(2.5e-7, 0.0, level=1e-7)


# ---------------------------------------------------------------------------------------------
# refimpl._scan
# ---------------------------------------------------------------------------------------------


def random_coefficients(rng, shape):
    """Complex a with |a| <= 1 (a few exactly 0 and exactly on the unit circle) and complex b."""
    a = np.sqrt(rng.uniform(0, 1, shape)) * np.exp(2j * np.pi * rng.uniform(size=shape))
    flat = a.reshape(-1)
    flat[:: 7] = np.exp(1j * rng.uniform(0, 2 * np.pi, flat[::7].shape))  # |a| = 1
    flat[3::11] = 0.0
    b = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    return a, b


class TestLinearScan:
    @pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000])
    def test_loop_twin(self, n):
        rng = np.random.default_rng(n)
        a, b = random_coefficients(rng, (n,))
        a0, b0 = a.copy(), b.copy()
        h = linear_scan(a, b)
        assert h.shape == (n,) and h.dtype == np.complex128
        assert_close(h, linear_scan_loop(a, b), rtol=SELF, what="linear_scan vs loop")
        np.testing.assert_array_equal(a, a0)  # inputs are not modified
        np.testing.assert_array_equal(b, b0)

    @pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000])
    def test_batched_axis_minus_two(self, n):
        # the layout of the SDE sampler: (batch..., N, d), scanned along axis -2
        rng = np.random.default_rng(100 + n)
        a, b = random_coefficients(rng, (n, 3))
        b = rng.normal(size=(2, 4, n, 3)) + 1j * rng.normal(size=(2, 4, n, 3))  # a broadcasts over the batch
        h = linear_scan(a, b, axis=-2)
        assert h.shape == (2, 4, n, 3)
        assert_close(h, linear_scan_loop(a, b, axis=-2), rtol=SELF, what="linear_scan axis=-2 vs loop")
        assert_close(h[1, 2, :, 0], linear_scan_loop(a[:, 0], b[1, 2, :, 0]), rtol=SELF, what="one channel")

    def test_axis_zero_and_real(self):
        rng = np.random.default_rng(5)
        a = rng.uniform(-1, 1, size=(50, 4))
        b = rng.normal(size=(50, 4))
        h = linear_scan(a, b, axis=0)
        assert h.dtype == np.float64
        assert_close(h, linear_scan_loop(a, b, axis=0), rtol=SELF, what="real scan axis=0")

    def test_against_lfilter(self):
        # constant a: h_i = a h_{i-1} + b_i is the IIR filter 1/(1 − a z^{-1}) (independent oracle)
        rng = np.random.default_rng(6)
        b = rng.normal(size=300) + 1j * rng.normal(size=300)
        for a in (0.0, 0.5, -0.9, 0.95 * np.exp(0.3j), np.exp(1.1j), 1.0):
            ref = scipy.signal.lfilter([1.0], [1.0, -a], b)
            assert_close(linear_scan(np.full(300, a), b), ref, rtol=ORACLE * 10, what="linear_scan vs lfilter")
        assert_close(linear_scan(np.ones(300), b), np.cumsum(b), rtol=ORACLE * 10, what="a = 1: cumulative sum")
        np.testing.assert_array_equal(linear_scan(np.zeros(300), b), b)

    def test_first_coefficient_is_ignored(self):
        # h_{-1} = 0, so a_0 multiplies nothing: h_0 = b_0 whatever a_0 is
        rng = np.random.default_rng(7)
        a, b = random_coefficients(rng, (9,))
        a2 = a.copy()
        a2[0] = 123.0
        np.testing.assert_array_equal(linear_scan(a2, b), linear_scan(a, b))

    def test_empty(self):
        assert linear_scan(np.zeros(0), np.zeros(0)).shape == (0,)
        assert linear_scan_loop(np.zeros((2, 0)), np.zeros((2, 0))).shape == (2, 0)


class TestStateScan:
    """The block-carry recursion s_{m+1} = F s_m + u_m (two-level, recursive) against its loop."""

    # around the base case, one level (M ≤ ~256) and two levels of recursion (M > 256)
    @pytest.mark.parametrize("M", [0, 1, 2, _STATE_SCAN_BASE, _STATE_SCAN_BASE + 1, 17, 100, 257, 1000, 5003])
    @pytest.mark.parametrize("q", [1, 2, 5])
    def test_loop_twin(self, M, q):
        rng = np.random.default_rng(1000 * q + M)
        F = rng.normal(size=(q, q))
        F *= 0.98 / max(np.abs(np.linalg.eigvals(F)).max(), 1e-300)  # spectral radius 0.98
        U, s0 = rng.normal(size=(M, q, 3)), rng.normal(size=(q, 3))
        U0 = U.copy()
        S = state_scan(F, U, s0)
        assert S.shape == (M, q, 3)
        assert_close(S, state_scan_loop(F, U, s0), rtol=SELF, what="state_scan vs loop")
        np.testing.assert_array_equal(U, U0)  # input not modified
        if M:
            np.testing.assert_array_equal(S[0], s0)

    @pytest.mark.parametrize("scale", [1e-200, 1e-120, 1e-3, 0.5, 3.0])
    def test_matrix_powers_skip_only_what_rounds_to_zero(self, scale):
        """Powers whose bound ‖F‖^k lies below float64's range are left 0, not computed (in extended
        precision they are subnormal, slow): in float64 every power is what the full chain gives."""
        rng = np.random.default_rng(int(abs(np.log10(scale)) * 10) + 3)
        F = rng.normal(size=(3, 3)) * scale
        Fw = F.astype(np.longdouble)
        ref = [np.eye(3, dtype=np.longdouble)]
        for _ in range(40):  # the chain of matrix_powers' docstring, one factor at a time
            ref.append(Fw @ ref[-1])
        ref = np.array(ref)
        P = matrix_powers(F, 40)
        np.testing.assert_array_equal(P.astype(np.float64), ref.astype(np.float64))
        if scale < 1e-100:  # ‖F‖^2 < 1e-200 … : from some power on exactly 0, where the full chain is not
            assert not P[-1].any() and np.any(ref[2] != 0)
        else:
            np.testing.assert_array_equal(P, ref)

    @pytest.mark.parametrize("radius", [0.3, 0.6, 0.9])
    def test_no_subnormal_powers(self, radius):
        """The rounded powers a scan applies hold no subnormal number (a slow path of every product
        they enter): a decaying F's powers pass through that range and are flushed to 0."""
        tiny = np.finfo(np.float64).tiny
        x = np.array([1.0, tiny, tiny / 3, -tiny / 1e3, 5e-324, 0.0, -2.0])
        np.testing.assert_array_equal(_flush(x.copy()), [1.0, tiny, 0.0, 0.0, 0.0, 0.0, -2.0])
        z = _flush(np.array([tiny / 2 + 1j, 1 - 1j * tiny / 4]))
        np.testing.assert_array_equal(z, [1j, 1.0])
        rng = np.random.default_rng(int(radius * 10))
        F = rng.normal(size=(3, 3))
        F *= radius / np.abs(np.linalg.eigvals(F)).max()
        Fw = matrix_powers(F, 8)[8]  # a block map A^8
        arrays = [a for lv in column_levels(Fw, 200_000) for a in (lv.FeT, lv.Fill)]
        for lv in [_level(P) for P in scan_levels(Fw, 200_000)]:
            arrays += [lv.Pn, lv.Fe, lv.Wu, lv.Wc, *(z for z in lv.split_next if z is not None)]
        assert sum(np.count_nonzero((a != 0) & (np.abs(a) < tiny)) for a in arrays) == 0

    @pytest.mark.parametrize("M", [0, 1, 2, _STATE_SCAN_BASE, _STATE_SCAN_BASE + 1, 17, 100, 257, 1000, 5003])
    @pytest.mark.parametrize("q", [1, 2, 5])
    def test_column_scan_loop_twin(self, M, q):
        """The single-column form (row layout, the last steps filled in one product) against the loop."""
        rng = np.random.default_rng(1000 * q + M + 7)
        F = rng.normal(size=(q, q))
        F *= 0.98 / max(np.abs(np.linalg.eigvals(F)).max(), 1e-300)  # spectral radius 0.98
        U, s0 = rng.normal(size=(M, q)), rng.normal(size=q)
        U0 = U.copy()
        levels = column_levels(matrix_powers(F, 1)[1], M)
        assert len(levels) >= len(scan_levels(F, M)) + 1  # more: the last steps in one product
        assert levels[-1].R <= _super_block(q)  # … at most R·q ≈ 64 of them: a small fill matrix
        S = column_scan(U, s0, levels)
        assert S.shape == (M, q)
        ref = state_scan_loop(F, U[:, :, None], s0[:, None])[:, :, 0]
        assert_close(S, ref, rtol=SELF, what="column_scan vs loop")
        np.testing.assert_array_equal(U, U0)  # input not modified
        if M:
            np.testing.assert_array_equal(S[0], s0)
            assert_close(S, state_scan(F, U[:, :, None], s0[:, None])[:, :, 0], rtol=SELF, what="column_scan vs state_scan")

    @pytest.mark.parametrize("M", [1, 7, 100, 1365])
    @pytest.mark.parametrize("batch", [(3,), (2, 3)])
    def test_column_scan_columns_side_by_side(self, M, batch):
        """Leading axes are independent columns of the same F (refimpl._scan._block_filter_columns):
        each column's states as column_scan gives them for that column alone, and the loop's."""
        q = 4
        rng = np.random.default_rng(M + len(batch))
        F = rng.normal(size=(q, q))
        F *= 0.97 / np.abs(np.linalg.eigvals(F)).max()
        U, s0 = rng.normal(size=batch + (M, q)), rng.normal(size=batch + (q,))
        levels = column_levels(matrix_powers(F, 1)[1], M)
        S = column_scan(U, s0, levels)
        assert S.shape == U.shape
        for idx in np.ndindex(*batch):
            alone = column_scan(U[idx], s0[idx], levels)
            assert_close(S[idx], alone, rtol=1e-15, what="side by side vs alone")
            ref = state_scan_loop(F, U[idx][:, :, None], s0[idx][:, None])[:, :, 0]
            assert_close(S[idx], ref, rtol=SELF, what="side by side vs loop")

    def test_complex_and_marginal(self):
        # a rotation (|eigenvalues| = 1): nothing decays, errors cannot hide behind damping
        rng = np.random.default_rng(7)
        th = 0.3
        F = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        U = rng.normal(size=(3000, 2, 4))
        assert_close(state_scan(F, U, np.ones((2, 4))), state_scan_loop(F, U, np.ones((2, 4))),
                     rtol=SELF, what="state_scan, rotation")
        lam = 0.999 * np.exp(0.7j)
        Uc = rng.normal(size=(2000, 1, 2)) + 1j * rng.normal(size=(2000, 1, 2))
        S = state_scan(np.array([[lam]]), Uc, np.zeros((1, 2), dtype=complex))
        assert S.dtype == np.complex128
        # independent oracle: the first-order IIR filter 1/(1 − λ z⁻¹), delayed by one step
        ref = scipy.signal.lfilter([0.0, 1.0], [1.0, -lam], Uc[:, 0, :], axis=0)
        assert_close(S[:, 0, :], ref, rtol=ORACLE * 10, what="state_scan vs lfilter")


# ---------------------------------------------------------------------------------------------
# the shared vocabulary: flags, attention inputs, lags, Hermitian part, rng, overflow
# ---------------------------------------------------------------------------------------------


class TestVocabulary:
    def test_as_bool(self):
        from refimpl._validate import as_bool

        assert as_bool(True, "causal") is True and as_bool(np.bool_(False), "causal") is False
        for bad in ("no", "False", 1, 0, None, 1.0, np.array(True), [True]):
            with pytest.raises(TypeError, match=r"^causal: expected a bool"):
                as_bool(bad, "causal")

    def test_as_rng_and_refuse_rng(self):
        from refimpl._validate import refuse_rng

        assert isinstance(as_rng(0), np.random.Generator) and isinstance(as_rng(np.int64(3)), np.random.Generator)
        g = np.random.default_rng(1)
        assert as_rng(g) is g
        with pytest.raises(ValueError, match=r"^rng: expected a seed >= 0, got -1"):
            as_rng(-1)
        for bad in (0.5, "seed", [1, 2], True, np.random.RandomState(0)):
            with pytest.raises(TypeError, match=r"^rng: expected a numpy.random.Generator"):
                as_rng(bad)
        refuse_rng(None, "projection is given")  # None: nothing to refuse
        for given_rng in (0, g, "x"):
            with pytest.raises(ValueError, match=r"^rng: expected None when projection is given"):
                refuse_rng(given_rng, "projection is given")

    def test_check_qkv(self):
        from refimpl._validate import check_qk, check_qkv

        q, k, v = np.ones((2, 4, 3)), np.ones((5, 3)), np.ones((5, 2))
        q2, k2, v2, batch = check_qkv(q, k, v)
        assert batch == (2,) and q2.dtype == np.float64 and v2.shape == (5, 2)
        assert check_qk(q, k)[2] == (2,)
        cases = [
            ((np.ones(3), k, v), {}, r"^q: expected shape \(\.\.\., N, d\)"),
            ((q, np.ones((0, 3)), np.ones((0, 2))), {}, r"^k: expected shape .* at least one token"),
            ((q, np.ones((5, 4)), v), {}, r"^k: expected the same last dimension d = 3 as q"),
            ((q, k, np.ones((4, 2))), {}, r"^v: expected the same number of rows M = 5 as k"),
            ((q, k, v), {"causal": True}, r"^k: causal attention needs as many keys as q has queries"),
            ((q, np.ones((3, 5, 3)), v), {}, r"^k: the batch axes of q, k, v do not broadcast"),
            ((np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 2))), {"same_shape": True}, r"^v: expected the shape of q"),
            ((np.ones((4, 3)),) * 3, {"names": ("z", "z", "z"), "causal": True}, None),
        ]
        for args, kw, match in cases:
            if match is None:
                check_qkv(*args, **kw)
                continue
            with pytest.raises(ValueError, match=match):
                check_qkv(*args, **kw)
        with pytest.raises(ValueError, match=r"^z: expected shape"):
            check_qkv(np.ones(3), np.ones(3), np.ones(3), names=("z", "z", "z"))
        with pytest.raises(TypeError, match=r"^v: expected a number or array, got NoneType"):
            check_qkv(q, k, None)  # None is a wrong value, not "no values"
        zq = check_qkv(np.ones((2, 2)) * 1j, np.ones((2, 2)), np.ones((2, 2)), complex_values=True)[0]
        assert zq.dtype == np.complex128

    def test_as_lags_and_hermitian_part(self):
        from refimpl._validate import as_lags, hermitian_part

        np.testing.assert_array_equal(as_lags([0.0, 2.5], "tau"), [0.0, 2.5])
        with pytest.raises(ValueError, match=r"^tau: expected lags >= 0, got minimum -1"):
            as_lags([0.0, -1.0], "tau")
        with pytest.raises(ValueError, match=r"^tau: expected finite values"):
            as_lags([np.inf], "tau")
        m = np.array([[[1.0, 2.0 + 1j], [0.0, 3.0]]] * 2)
        h = hermitian_part(m)
        np.testing.assert_array_equal(h, np.conj(np.swapaxes(h, -1, -2)))
        np.testing.assert_array_equal(h[0], [[1.0, 1.0 + 0.5j], [1.0 - 0.5j, 3.0]])

    def test_pow2_scale(self):
        from refimpl._validate import pow2_scale

        x = np.array([[3e300, -1.0], [0.0, 0.0], [1e-300, 2e-300]])
        y, s = pow2_scale(x, axis=-1)
        np.testing.assert_array_equal(y * s, x)  # a power of two: exact both ways
        assert np.all(np.frexp(s)[0] == 0.5)  # s = 2^e
        assert np.all(np.abs(y).max(axis=-1) <= 1.0) and np.all(np.abs(y[[0, 2]]).max(axis=-1) >= 0.5)
        assert s[1, 0] == 1.0  # an all-zero row is left alone
        y, s = pow2_scale(np.array([0.75, -6.0]))
        assert s == 8.0 and np.array_equal(y, [0.09375, -0.75])

    def test_guard_overflow(self):
        import inspect
        import math
        import warnings

        from refimpl._validate import guard_overflow

        @guard_overflow()
        def square_sum(x, scale=1.0):
            x = as_real_array(x, "x")
            return scale * np.sum(x * x)

        @guard_overflow()
        def loop_exp(t):
            return math.exp(t)

        @guard_overflow()
        def outer(y):
            return square_sum(y)  # an inner refusal names the inner argument x: re-raised for y

        @guard_overflow()
        def own_error(x):
            raise ValueError("x: expected something else")

        @guard_overflow()
        def nan_out(x, y):
            return np.array([np.nan])

        @guard_overflow(first_only=True)
        def with_diagnostics(x):
            return np.asarray(x, dtype=float), np.array([np.inf])

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert square_sum([1e150, 1.0]) == 1e150 * 1e150 + 1.0
            with pytest.raises(ValueError, match=r"^x \(\|x\| from 1 to 1e\+200\): the result is not representable"):
                square_sum([1e200, 1.0])
            with pytest.raises(ValueError, match=r"^scale \(\|scale\| from 1e\+300"):
                square_sum([1e10], scale=1e300)
            with pytest.raises(ValueError, match=r"^t \(\|t\| from 1e\+300"):
                loop_exp(1e300)
            with pytest.raises(ValueError, match=r"^y \(\|y\| from"):
                outer([1e300])
            with pytest.raises(ValueError, match=r"^x: expected something else"):
                own_error(1e300)  # the function's own, named error passes through unchanged
            assert with_diagnostics([1.0])[1][0] == np.inf
            with pytest.raises(ValueError, match=r"^x, y: the result is not representable"):
                nan_out(1.0, 2.0)  # no extreme argument to blame: every argument is listed
        assert square_sum.__name__ == "square_sum" and "scale" in str(inspect.signature(square_sum))

    def test_guard_overflow_skips_only_what_the_function_vouched_for(self):
        from refimpl._validate import guard_overflow, vouch_finite

        seen = []

        @guard_overflow()
        def vouched(x, which):
            a, b = np.array([x]), np.array([x])
            vouch_finite(a)
            seen.append(True)
            return {"a": a, "b": b, "both": (a, b)}[which]

        @guard_overflow()
        def outer(x):  # the inner call's vouching ends with it: the outer guard checks for itself
            a = vouched(1.0, "a")
            a[0] = x
            return a

        assert vouched(np.inf, "a")[0] == np.inf  # vouched for (wrongly, here): not read again
        with pytest.raises(ValueError, match="not representable"):
            vouched(np.inf, "b")  # another array: checked
        with pytest.raises(ValueError, match="not representable"):
            vouched(np.inf, "both")  # a tuple: its other member is checked
        with pytest.raises(ValueError, match="not representable"):
            outer(np.nan)
        vouch_finite(np.array([np.nan]))  # outside a guarded call: nothing to tell, nothing happens
        assert len(seen) == 4
