"""The workspace budget (refimpl._blocking) changes how much is held at once, never the result.

Each blocked function is run with the budget shrunk to one number (one row, chunk, slab or time
step per block) and with a budget larger than the problem (one block), and both agree with
the function's loop twin. ``per_block`` itself is checked on its edge cases.
"""

from __future__ import annotations

import numpy as np
import pytest

import refimpl._blocking as blocking
from refimpl import afa, attention, iir, random_features, ssm
from refimpl._scan import block_filter, block_matrices
from refimpl._testing import SELF, assert_close


@pytest.fixture(params=[1, 10**12], ids=["one-item-blocks", "one-block"])
def budget(request, monkeypatch):
    monkeypatch.setattr(blocking, "WORKSPACE_FLOATS", request.param)
    return request.param


def test_per_block_edges(monkeypatch):
    monkeypatch.setattr(blocking, "WORKSPACE_FLOATS", 100)
    assert blocking.per_block(10) == 10
    assert blocking.per_block(1000) == 1  # larger than the budget: alone
    assert blocking.per_block(0) == 100  # no cost: the budget bounds the count
    assert blocking.per_block(1000, minimum=32) == 32


def test_iir_slabs(budget):
    rng = np.random.default_rng(1)
    b, a = iir.butter(4, 0.2, output="ba")
    x = rng.standard_normal((203, 3))  # 203 = 12 blocks of 16 and a partial one
    assert_close(iir.tf_filter(b, a, x), iir.tf_filter_loop(b, a, x), rtol=SELF, what=f"tf_filter, budget {budget}")


def test_block_filter_matches_its_lifted_form(budget):
    # the outputs of the first block are [O T] [s0; x_0 … x_{K−1}] (the formula the slabs apply)
    rng = np.random.default_rng(2)
    A = np.array([[0.5, -0.3], [0.2, 0.9]])
    B, C, D = rng.standard_normal(2), rng.standard_normal(2), 0.3
    x, s0 = rng.standard_normal((40, 1)), rng.standard_normal((2, 1))
    y, _ = block_filter(A, B, C, D, x, s0, block=8)
    _, _, O, T, _ = block_matrices(A, B, C, D, 8)
    assert_close(y[:8, 0], O @ s0[:, 0] + T @ x[:8, 0], rtol=SELF, what="first block = [O T][s; x]")


def test_attention_rows(budget):
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((3, 2, 37, 4))
    y = attention.softmax_attention(q, k, v, causal=True)
    y_ref = attention.softmax_attention(q, k, v, causal=True, return_weights=True)[0]  # unblocked path
    assert_close(y, y_ref, rtol=SELF, what=f"softmax_attention, budget {budget}")


def test_isotropic_afa_rows(budget):
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((9, 4)) + 1j * rng.standard_normal((9, 4)) for _ in range(3))
    kw = dict(mu=0.3, omega=np.array([1.0, -0.5, 2.0, 0.0]), sigma2=0.5, eta2=0.1, gamma2=0.05, nu=2.0)
    assert_close(afa.isotropic_afa(q, k, v, **kw), afa.isotropic_afa_loop(q, k, v, **kw), rtol=SELF,
                 what=f"isotropic_afa, budget {budget}")


def test_linear_attention_groups(budget):
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((3, 300, 4))
    assert_close(random_features.linear_attention(q, k, v, causal=True),
                 random_features.linear_attention_loop(q, k, v, causal=True), rtol=SELF,
                 what=f"linear_attention, budget {budget}")


def test_selective_scan_steps(budget):
    rng = np.random.default_rng(6)
    L, d, n = 70, 2, 3
    args = (rng.standard_normal((L, d)), 0.1 + rng.random((L, d)), -np.exp(rng.standard_normal((d, n))),
            rng.standard_normal((L, n)), rng.standard_normal((L, n)))
    assert_close(ssm.selective_scan(*args), ssm.selective_scan_loop(*args), rtol=SELF,
                 what=f"selective_scan, budget {budget}")


@pytest.mark.parametrize("macs", [1, 25, 61, 2**19])
def test_one_thread_matmul_equals_matmul(macs):
    # pieces by a reshape (a divisor of the 7 or 12 rows near the largest piece) or by a loop over
    # slices of rows (7 rows in pieces of at most 3); broadcast stacks, transposed operands, out=
    from refimpl._blocking import one_thread_matmul

    rng = np.random.default_rng(macs)
    for rows in (7, 12):
        a = np.swapaxes(rng.normal(size=(2, 1, 4, rows)), -1, -2)
        b = rng.normal(size=(3, 4, 5))
        want = np.matmul(a, b)
        tol = dict(rtol=0, atol=1e-14 * 4 * np.abs(a).max() * np.abs(b).max())  # BLAS may round a piece differently
        np.testing.assert_allclose(one_thread_matmul(a, b, macs=macs), want, **tol)
        buf = np.full((2, 3, rows, 10), np.nan)
        got = one_thread_matmul(a, b, out=buf[..., ::2], macs=macs)
        assert got.base is buf or np.shares_memory(got, buf)
        np.testing.assert_allclose(buf[..., ::2], want, **tol)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum_rows_equals_cumsum(axis):
    from refimpl._scan import cumsum_rows

    a = np.random.default_rng(3).normal(size=(5, 6, 7))
    want = np.cumsum(a, axis=axis)
    np.testing.assert_array_equal(cumsum_rows(a, axis, np.empty_like(a)), want)
    b = a.copy()
    assert cumsum_rows(b, axis, b) is b  # in place
    np.testing.assert_array_equal(b, want)


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (511, 16), (512, 3), (513, 600), (2, 1100, 5), (2, 3, 7, 1030)])
def test_copy_transposed_equals_swapaxes(shape):
    # tiles of 512 rows and columns, the last ones partial; leading axes; a strided source and destination
    from refimpl._blocking import copy_transposed

    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape)
    want = np.swapaxes(x, -1, -2)
    out = copy_transposed(x, np.empty(want.shape))
    np.testing.assert_array_equal(out, want)
    assert out.flags.c_contiguous
    big = rng.normal(size=shape[:-1] + (2 * shape[-1] + 1,))
    dst = np.full(shape[:-2] + (shape[-1], 3 * shape[-2]), np.nan)
    assert copy_transposed(big[..., 1::2], dst[..., ::3]) is not None
    np.testing.assert_array_equal(dst[..., ::3], np.swapaxes(big[..., 1::2], -1, -2))
    assert np.isnan(dst[..., 1::3]).all()  # nothing written between the destination's columns
    zc = copy_transposed(x + 1j * x, np.empty(want.shape, dtype=complex))
    np.testing.assert_array_equal(zc, want + 1j * want)


def test_l2_cache_bytes_reads_sysfs(tmp_path):
    # the L2 size sets the chunked recurrences' group size (linear_rnn._GROUP_ROWS): read from Linux's sysfs,
    # the first level-2 data or unified cache; None where nothing usable is reported
    def index(i, level, kind, size):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(text + "\n")

    assert blocking.l2_cache_bytes(str(tmp_path)) is None  # nothing reported
    index(0, "1", "Data", "48K")
    index(1, "2", "Instruction", "64K")  # not a data cache
    assert blocking.l2_cache_bytes(str(tmp_path)) is None
    index(2, "2", "Unified", "2048K")
    index(3, "3", "Unified", "32768K")
    assert blocking.l2_cache_bytes(str(tmp_path)) == 2 << 20
    (tmp_path / "index2" / "size").write_text("1M\n")
    assert blocking.l2_cache_bytes(str(tmp_path)) == 1 << 20
    (tmp_path / "index2" / "size").write_text("n/a\n")
    assert blocking.l2_cache_bytes(str(tmp_path)) is None
    (tmp_path / "index2" / "size").unlink()
    assert blocking.l2_cache_bytes(str(tmp_path)) is None
    assert blocking.l2_cache_bytes(str(tmp_path / "missing")) is None


def test_group_rows_follow_the_l2_cache():
    # one row per KiB of L2, within [512, 4096]; 2048 where the size is unknown
    from refimpl import linear_rnn

    size = blocking.l2_cache_bytes()
    assert linear_rnn._GROUP_ROWS == (2048 if size is None else min(4096, max(512, size >> 10)))
