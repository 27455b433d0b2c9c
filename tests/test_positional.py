"""Tests of :mod:`refimpl.positional`: sinusoidal encodings, the shift matrix M_k and RoPE.

Oracles, each independent of the code under test:

* the annotated transformer's ``div_term = exp(arange(0, d, 2) · (−log(10000)/d))`` formula for
  the sinusoidal encoding (written here with ``np.exp``/``np.log``, not powers);
* the block-diagonal rotation matrix ``R_m = block_diag(R(mθ_0), …)`` built with
  ``scipy.linalg.block_diag``, RoFormer §3.2.2;
* the half-split ``rotate_half`` RoPE of GPT-NeoX / Hugging Face, written here, which equals the
  interleaved RoPE up to a channel permutation;
* the interleaved RoPE of Meta's LLaMA reference (complex view) and GPT-J's ``rotate_every_two``,
  GPT-NeoX's and GPT-J's partial rotary (``rotary_pct < 1``, ``rotary_dim``) and Hugging Face's
  conversion of LLaMA's query/key projections, each written here;
* Llama 3's base 500000 and Llama 3.1's rescaled ladder (Meta's ``apply_scaling``), written here
  with their own ladders, and position interpolation (positions / s = frequencies / s);
* closed forms: PE_p · PE_p′ = Σ_i cos(ω_i (p − p′)); RoFormer's decay curve at r = 0 is (d/2 + 1)/2.

Tolerances: :mod:`refimpl._testing`.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl._testing import ORACLE, SELF, assert_close
from refimpl.positional import (
    frequencies,
    relative_shift_matrix,
    rope,
    rope_complex,
    rope_decay_bound,
    rope_loop,
    sinusoidal_encoding,
    sinusoidal_encoding_loop,
)

from _recording import recorder  # noqa: E402

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, _ = recorder()


def annotated_transformer_pe(n, d):
    """harvardnlp/annotated-transformer ``PositionalEncoding`` in NumPy float64."""
    position = np.arange(n)[:, None]
    div_term = np.exp(np.arange(0, d, 2) * -(np.log(10000.0) / d))
    pe = np.zeros((n, d))
    pe[:, 0::2] = np.sin(position * div_term)
    pe[:, 1::2] = np.cos(position * div_term)
    return pe


def rotation_matrix(m, theta):
    """R^d_{Θ,m} of RoFormer §3.2.2: block diagonal of [[cos, −sin], [sin, cos]](m θ_i)."""
    return scipy.linalg.block_diag(*[np.array([[np.cos(m * t), -np.sin(m * t)], [np.sin(m * t), np.cos(m * t)]]) for t in theta])


# ---------------------------------------------------------------------------------------------
class TestFrequencies:
    def test_ladder(self):
        w = frequencies(8, 10000.0)
        close(w, [1.0, 0.1, 0.01, 0.001], rtol=ORACLE, what="frequencies d=8")
        close(frequencies(6, base=64.0), [1.0, 0.25, 1 / 16], rtol=ORACLE, what="frequencies base 64")

    @pytest.mark.parametrize(
        ("d", "base", "exc", "match"),
        [(7, 1e4, ValueError, "^d_model: expected an even"), (0, 1e4, ValueError, "^d_model: expected an even"),
         (4.0, 1e4, TypeError, "^d_model: expected an int"), (4, -1.0, ValueError, "^base: "),
         (4, np.nan, ValueError, "^base: ")],
    )
    def test_errors(self, d, base, exc, match):
        with pytest.raises(exc, match=match):
            frequencies(d, base)


class TestSinusoidalEncoding:
    @pytest.mark.parametrize(("n", "d"), [(1, 2), (50, 16), (300, 64), (0, 4)])
    def test_loop_twin_and_oracle(self, n, d):
        pe = sinusoidal_encoding(n, d)
        assert pe.shape == (n, d)
        close(pe, sinusoidal_encoding_loop(n, d), rtol=SELF, what="sinusoidal vs loop")
        if n:
            close(pe, annotated_transformer_pe(n, d), rtol=ORACLE, what="sinusoidal vs annotated transformer")

    def test_first_rows_closed_form(self):
        pe = sinusoidal_encoding(3, 4, base=100.0)  # ω = (1, 0.1)
        expected = [[0, 1, 0, 1], [np.sin(1), np.cos(1), np.sin(0.1), np.cos(0.1)],
                    [np.sin(2), np.cos(2), np.sin(0.2), np.cos(0.2)]]
        close(pe, expected, rtol=ORACLE, what="first rows")

    @pytest.mark.parametrize("k", [0, 1, 5, -3, 17, 2.5])
    def test_relative_shift_matrix(self, k):
        d = 16
        pe = sinusoidal_encoding(60, d)
        M = relative_shift_matrix(k, d)
        p = np.arange(20, 40)
        shifted = np.stack([np.sin((p[:, None] + k) * frequencies(d)), np.cos((p[:, None] + k) * frequencies(d))], -1)
        close(pe[p] @ M.T, shifted.reshape(len(p), d), rtol=ORACLE, what="PE[p+k] = M_k PE[p]")
        if float(k).is_integer():
            close(pe[p] @ M.T, pe[p + int(k)], rtol=1e-12, what="PE[p+k] = M_k PE[p] (table)")
        close(M @ M.T, np.eye(d), rtol=ORACLE, what="M_k orthogonal")

    def test_shift_matrix_group(self):
        close(relative_shift_matrix(3, 8) @ relative_shift_matrix(4, 8), relative_shift_matrix(7, 8), rtol=ORACLE,
              what="M_3 M_4 = M_7")
        close(relative_shift_matrix(-5, 8), relative_shift_matrix(5, 8).T, rtol=ORACLE, what="M_-k = M_k^T")
        assert_close(relative_shift_matrix(0, 8), np.eye(8), rtol=0.0)

    @settings(max_examples=30)
    @given(p=st.integers(0, 200), q=st.integers(0, 200), shift=st.integers(0, 300))
    def test_dot_product_depends_on_difference(self, p, q, shift):
        d = 32
        pe = sinusoidal_encoding(520, d)
        dot = pe[p] @ pe[q]
        assert abs(dot - pe[p + shift] @ pe[q + shift]) < 1e-12 * d
        assert abs(dot - np.sum(np.cos(frequencies(d) * (p - q)))) < 1e-12 * d

    def test_values_bounded(self):
        pe = sinusoidal_encoding(1000, 64)
        assert np.all(np.abs(pe) <= 1.0)
        close(pe[:, 0::2] ** 2 + pe[:, 1::2] ** 2, np.ones((1000, 32)), rtol=1e-14, what="sin² + cos² = 1")

    def test_tensor2tensor_variant_differs(self):
        # get_timing_signal_1d: concatenated [sin, cos] on the grid 10000^{−i/(d/2−1)} — not a permutation
        n, d = 50, 16
        inv = np.exp(-np.log(10000.0) * np.arange(d // 2) / (d // 2 - 1))
        t2t = np.concatenate([np.sin(np.arange(n)[:, None] * inv), np.cos(np.arange(n)[:, None] * inv)], axis=1)
        pe = sinusoidal_encoding(n, d)
        interleaved = np.empty_like(t2t)
        interleaved[:, 0::2], interleaved[:, 1::2] = t2t[:, : d // 2], t2t[:, d // 2 :]
        assert np.max(np.abs(interleaved - pe)) > 0.1  # re-ordering alone does not recover the paper's encoding

    @pytest.mark.parametrize("func", [sinusoidal_encoding, sinusoidal_encoding_loop])
    @pytest.mark.parametrize(
        ("args", "exc", "match"),
        [((10, 5), ValueError, "^d_model: expected an even"), ((-1, 4), ValueError, "^n_positions: "),
         ((2.5, 4), TypeError, "^n_positions: expected an int"), ((10, 4, 0.0), ValueError, "^base: ")],
    )
    def test_errors(self, func, args, exc, match):
        with pytest.raises(exc, match=match):
            func(*args)

    def test_shift_matrix_errors(self):
        with pytest.raises(ValueError, match="^d_model: expected an even"):
            relative_shift_matrix(1, 5)
        with pytest.raises(ValueError, match="^k: expected finite"):
            relative_shift_matrix(np.inf, 4)
        with pytest.raises(ValueError, match="^k: expected 0 dimensions"):
            relative_shift_matrix([1, 2], 4)


# ---------------------------------------------------------------------------------------------
class TestRope:
    @pytest.mark.parametrize("shape", [(5, 2), (3, 7, 8), (2, 2, 4, 16)])
    def test_three_forms_agree_and_matrix_oracle(self, shape):
        x = np.random.default_rng(len(shape)).normal(size=shape)
        pos = np.linspace(0.0, 300.0, shape[-2])
        y = rope(x, pos)
        close(y, rope_loop(x, pos), rtol=SELF, what="rope vs loop")
        close(y, rope_complex(x, pos), rtol=SELF, what="rope vs complex")
        theta = frequencies(shape[-1])
        ref = np.stack([rotation_matrix(p, theta) @ x[..., i, :].reshape(-1, shape[-1]).T for i, p in enumerate(pos)])
        ref = np.moveaxis(ref.T.reshape(*shape[:-2], shape[-1], shape[-2]), -1, -2) if len(shape) > 2 else ref[..., 0]
        close(y, ref, rtol=ORACLE, what="rope vs RoFormer block rotation matrix")

    def test_complex_output(self):
        x = np.random.default_rng(0).normal(size=(4, 6))
        z = rope_complex(x, as_complex=True)
        assert z.shape == (4, 3) and z.dtype == np.complex128
        theta = frequencies(6)
        close(z, (x[:, 0::2] + 1j * x[:, 1::2]) * np.exp(1j * np.arange(4)[:, None] * theta), rtol=ORACLE,
              what="complex form")

    def test_custom_freqs_and_base(self):
        x = np.random.default_rng(1).normal(size=(6, 4))
        f = np.array([0.3, 0.05])
        close(rope(x, freqs=f), rope_loop(x, freqs=f), rtol=SELF, what="custom freqs vs loop")
        ref = np.stack([rotation_matrix(p, f) @ x[p] for p in range(6)])
        close(rope(x, freqs=f), ref, rtol=ORACLE, what="custom freqs vs matrix")
        close(rope(x, base=100.0), rope(x, freqs=[1.0, 0.1]), rtol=ORACLE, what="base 100")

    def test_position_zero_is_identity_and_norm_preserved(self):
        x = np.random.default_rng(2).normal(size=(9, 8))
        assert_close(rope(x, np.zeros(9)), x, rtol=0.0)
        close(np.linalg.norm(rope(x), axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-14, what="norm preserved")

    def test_composition(self):
        # R_m R_n = R_{m+n}: rotating by n then by m equals rotating by m + n
        x = np.random.default_rng(3).normal(size=(5, 8))
        m, n = np.arange(5) * 3.0, np.arange(5) * 7.0 + 1
        close(rope(rope(x, n), m), rope(x, m + n), rtol=1e-13, what="R_m R_n = R_{m+n}")

    @settings(max_examples=40)
    @given(seed=st.integers(0, 2**31), m=st.integers(0, 10_000), n=st.integers(0, 10_000), s=st.integers(-5000, 5000))
    def test_relative_position_property(self, seed, m, n, s):
        rng = np.random.default_rng(seed)
        q, k = rng.normal(size=(2, 1, 16))
        score = rope(q, [m]) @ rope(k, [n]).T
        shifted = rope(q, [m + s]) @ rope(k, [n + s]).T
        theta = frequencies(16)
        direct = q[0] @ rotation_matrix(n - m, theta) @ k[0]  # q^T R_{n−m} k
        scale = np.linalg.norm(q) * np.linalg.norm(k)
        assert abs(score[0, 0] - shifted[0, 0]) <= 1e-12 * scale * max(1, abs(m) + abs(n) + abs(s)) / 100
        assert abs(score[0, 0] - direct) <= 1e-12 * scale * max(1, abs(m) + abs(n)) / 100

    def test_rotate_half_layout_is_a_permutation(self):
        # GPT-NeoX / HF: pairs (i, i + d/2), x·cos + rotate_half(x)·sin with rotate_half = (−x2, x1)
        d = 8
        x = np.random.default_rng(4).normal(size=(6, d))
        theta = frequencies(d)
        ang = np.arange(6)[:, None] * np.concatenate([theta, theta])
        perm = np.r_[np.arange(0, d, 2), np.arange(1, d, 2)]  # interleaved -> half-split
        xh = x[:, perm]
        rot_half = np.concatenate([-xh[:, d // 2 :], xh[:, : d // 2]], axis=1)
        yh = xh * np.cos(ang) + rot_half * np.sin(ang)
        close(rope(x)[:, perm], yh, rtol=ORACLE, what="rotate_half layout up to permutation")
        close(rope(x), yh[:, np.argsort(perm)], rtol=ORACLE, what="rotate_half layout mapped back by argsort(perm)")
        assert np.max(np.abs(rope(xh) - yh)) > 0.1  # applying the wrong layout is not the same

    def test_interleaved_implementations_need_no_permutation(self):
        # Meta's LLaMA reference: view_as_complex(x.reshape(..., d/2, 2)) * polar(1, p θ)
        # GPT-J rotate_every_two (= the rotate_half of lucidrains' rotary-embedding-torch):
        # x·cos + (−x1, x0, −x3, x2, …)·sin
        d = 12
        x = np.random.default_rng(11).normal(size=(2, 7, d))
        pos = np.array([0.0, 1.0, 2.0, 5.0, 30.0, 400.0, 1234.5])
        theta = frequencies(d)
        z = x.reshape(2, 7, d // 2, 2)
        z = (z[..., 0] + 1j * z[..., 1]) * np.exp(1j * np.outer(pos, theta))
        meta = np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
        ang = np.repeat(np.outer(pos, theta), 2, axis=-1)

        def every_two(t):
            return t * np.cos(ang) + np.stack([-t[..., 1::2], t[..., 0::2]], axis=-1).reshape(t.shape) * np.sin(ang)

        close(rope(x, pos), meta, rtol=ORACLE, what="Meta LLaMA complex view, no permutation")
        close(rope(x, pos), every_two(x), rtol=ORACLE, what="GPT-J rotate_every_two, no permutation")
        perm = np.r_[0:d:2, 1:d:2]
        # the half-split recipe is wrong for an interleaved helper
        assert np.max(np.abs(rope(x, pos)[..., perm] - every_two(x[..., perm]))) > 0.1

    @pytest.mark.parametrize(("d", "pct"), [(32, 0.25), (16, 0.5), (24, 0.25)])
    def test_partial_rotary_is_rope_on_the_first_channels(self, d, pct):
        # GPT-NeoX / HF: rotary_ndims = int(d · rotary_pct) channels, half-split, base^(−2i/rotary_ndims)
        r = int(d * pct)
        x = np.random.default_rng(d).normal(size=(9, d))
        pos = np.arange(9.0) * 3
        th = 1.0 / 10000.0 ** (np.arange(0, r, 2) / r)
        emb = np.concatenate([np.outer(pos, th)] * 2, axis=-1)
        xr = x[:, :r]
        neox = np.concatenate([xr * np.cos(emb) + np.concatenate([-xr[:, r // 2 :], xr[:, : r // 2]], 1) * np.sin(emb), x[:, r:]], 1)
        pr = np.r_[0:r:2, 1:r:2]
        ours = np.concatenate([rope(xr[:, np.argsort(pr)], pos)[:, pr], x[:, r:]], axis=1)
        close(ours, neox, rtol=ORACLE, what=f"partial rotary d = {d}, rotary_pct = {pct}")
        perm = np.r_[0:d:2, 1:d:2]
        assert np.max(np.abs(rope(x[:, np.argsort(perm)], pos)[:, perm] - neox)) > 0.1  # full width is wrong
        assert np.max(np.abs(np.concatenate([rope(xr, pos), x[:, r:]], 1) - neox)) > 0.1  # so is leaving out pr
        # GPT-J rotary_dim = r: interleaved within the first r channels, so no permutation
        ang = np.repeat(np.outer(pos, th), 2, axis=-1)
        gptj = xr * np.cos(ang) + np.stack([-xr[:, 1::2], xr[:, 0::2]], axis=-1).reshape(xr.shape) * np.sin(ang)
        close(np.concatenate([rope(xr, pos), x[:, r:]], 1), np.concatenate([gptj, x[:, r:]], 1), rtol=ORACLE,
              what=f"GPT-J rotary_dim = {r} of d = {d}")

    def test_base_and_frequency_scaling(self):
        # Llama 3: Meta's complex view with rope_theta = 500000; Llama 3.1: its apply_scaling of that ladder
        # (factor 8, low/high frequency factors 1 and 4, original context 8192), written here as a loop
        d = 128
        pos = np.array([0.0, 1.0, 5.0, 100.0, 3000.0, 8191.0])
        x = np.random.default_rng(13).normal(size=(pos.size, d))
        th3 = 1.0 / 500000.0 ** (np.arange(0, d, 2) / d)

        def apply_scaling(freqs, factor=8.0, low=1.0, high=4.0, old_len=8192.0):
            out = []
            for f in freqs:
                wavelen = 2 * np.pi / f
                if wavelen < old_len / high:
                    out.append(f)
                elif wavelen > old_len / low:
                    out.append(f / factor)
                else:
                    smooth = (old_len / wavelen - low) / (high - low)
                    out.append((1 - smooth) * f / factor + smooth * f)
            return np.array(out)

        def complex_view(t, theta):
            z = t.reshape(*t.shape[:-1], -1, 2)
            z = (z[..., 0] + 1j * z[..., 1]) * np.exp(1j * np.outer(pos, theta))
            return np.stack([z.real, z.imag], axis=-1).reshape(t.shape)

        th31 = apply_scaling(th3)
        assert np.sum(th31 == th3) > 0 and np.sum(th31 < th3) > 0  # both kinds of pairs occur at d = 128
        llama3, llama31 = complex_view(x, th3), complex_view(x, th31)
        close(rope(x, pos, base=500000.0), llama3, rtol=ORACLE, what="Llama 3: rope(base=500000)")
        close(rope(x, pos, freqs=th31), llama31, rtol=ORACLE, what="Llama 3.1: rope(freqs=scaled ladder)")
        assert np.max(np.abs(rope(x, pos) - llama3)) > 0.1  # the default base is wrong for Llama 3
        assert np.max(np.abs(rope(x, pos, base=500000.0) - llama31)) > 0.1  # the unscaled ladder is wrong for 3.1
        # position interpolation: positions p / s == every θ_i / s
        s = 3.0
        close(rope(x, pos / s), rope(x, pos, freqs=frequencies(d) / s), rtol=1e-12, what="positions / s == θ / s")

    def test_hf_llama_conversion_is_the_permutation(self):
        # convert_llama_weights_to_hf: w.view(n_heads, d/2, 2, dim).transpose(1, 2).reshape(n_heads·d, dim)
        n_heads, d, dim = 3, 8, 20
        rng = np.random.default_rng(12)
        wq, wk = rng.normal(size=(2, n_heads * d, dim))
        to_hf = lambda w: w.reshape(n_heads, d // 2, 2, dim).transpose(0, 2, 1, 3).reshape(n_heads * d, dim)
        perm = np.r_[0:d:2, 1:d:2]
        np.testing.assert_array_equal(to_hf(wq), wq.reshape(n_heads, d, dim)[:, perm].reshape(n_heads * d, dim))
        x = rng.normal(size=(6, dim))
        pos = np.arange(6.0)
        ang = np.outer(pos, np.concatenate([frequencies(d)] * 2))
        for h in range(n_heads):
            sl = slice(h * d, (h + 1) * d)
            qh, kh = x @ to_hf(wq)[sl].T, x @ to_hf(wk)[sl].T
            half = lambda t: t * np.cos(ang) + np.concatenate([-t[:, d // 2 :], t[:, : d // 2]], 1) * np.sin(ang)
            close(half(qh) @ half(kh).T, rope(x @ wq[sl].T, pos) @ rope(x @ wk[sl].T, pos).T, rtol=ORACLE,
                  what="HF LLaMA scores == Meta LLaMA scores")

    @pytest.mark.parametrize("func", [rope, rope_loop, rope_complex])
    @pytest.mark.parametrize(
        ("args", "kwargs", "exc", "match"),
        [
            ((np.ones((4, 5)),), {}, ValueError, "^x: expected an even last dimension"),
            ((np.ones(4),), {}, ValueError, "^x: expected shape"),
            ((np.full((4, 4), np.nan),), {}, ValueError, "^x: expected finite"),
            ((np.ones((4, 4)), np.arange(3)), {}, ValueError, "^positions: expected shape \\(4,\\)"),
            ((np.ones((4, 4)), [0, 1, np.inf, 3]), {}, ValueError, "^positions: expected finite"),
            ((np.ones((4, 4)),), {"freqs": [1.0, 2.0, 3.0]}, ValueError, "^freqs: expected shape \\(2,\\)"),
            ((np.ones((4, 4)),), {"freqs": [1.0, np.nan]}, ValueError, "^freqs: expected finite"),
            ((np.ones((4, 4)),), {"base": -2.0}, ValueError, "^base: "),
            ((np.ones((4, 4)) + 1j,), {}, TypeError, "^x: expected real"),
        ],
    )
    def test_errors(self, func, args, kwargs, exc, match):
        with pytest.raises(exc, match=match):
            func(*args, **kwargs)


class TestDecayBound:
    def test_against_double_loop(self):
        d, r = 16, np.array([0.0, 1.0, 7.5, 40.0])
        theta = frequencies(d)
        ref = [np.mean([abs(sum(np.exp(1j * rr * theta[k]) for k in range(j))) for j in range(1, d // 2 + 1)]) for rr in r]
        close(rope_decay_bound(r, d), ref, rtol=ORACLE, what="decay bound vs double loop")

    def test_zero_distance_and_decay(self):
        d = 128
        assert_close(rope_decay_bound([0.0], d), [(d // 2 + 1) / 2], rtol=ORACLE)
        b = rope_decay_bound(np.arange(0, 251), d)
        # the paper's Fig. 2: the curve decays with distance (on average over windows)
        means = [b[i : i + 50].mean() for i in range(0, 250, 50)]
        assert all(x > y for x, y in zip(means, means[1:]))
        assert b[0] > 4 * b[200]  # paper Fig. 2: from 32.5 at r = 0 to about 7 near r = 200

    def test_not_monotone(self):
        # the docstring: the curve decays on average but oscillates (d = 64: rises on about half of the steps)
        b = rope_decay_bound(np.arange(0.0, 1001.0), 64)
        rises = int(np.sum(np.diff(b) > 0))
        assert 300 < rises < 700, rises
        assert b[10:101].min() < b[100] < b[10]  # a dip between r = 10 and r = 100 below the value at r = 100

    def test_errors(self):
        with pytest.raises(ValueError, match="^distances: expected 1 dimensions"):
            rope_decay_bound(np.ones((2, 2)), 8)
        with pytest.raises(ValueError, match="^d: expected an even"):
            rope_decay_bound([1.0], 7)
