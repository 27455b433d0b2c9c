"""The backward pass of mamba_ssm's ``selective_scan_fn``: :func:`refimpl.ssm.selective_scan_fn_vjp`.

Checked against (1) an independent step-by-step reference written here in the *official* layout
(u, delta, z (batch, D, L); B, C (D, N), (batch, N, L) or (batch, G, N, L)) from Eqs. (11.14),
(11.16), (11.21)–(11.23), in holomorphic operations only, so that (2) every gradient is checked by
the complex step (directional derivatives, error ~1e-15), through the softplus (also above the
kernel's threshold 20), the bias, D and the silu gate. A complex A makes the output
``2 Re⟨C, h⟩``, which is not holomorphic: there the reference runs on real and imaginary parts as
separate real arrays (complex products written out), which the complex step can perturb
independently, and the complex gradients are read as ``∂ℓ/∂Re + i ∂ℓ/∂Im``. Then (3) the loop twin,
(4) refimpl's own ``selective_scan_vjp`` after the mapping of chapter 11, §11.10, (5) bad input named
in the official terms, (6) the oracle: golden cases, random inputs, plain low-precision models and
planted bugs.
"""

from __future__ import annotations

import numpy as np
import pytest

import refimpl._vjp as vjp_module
from refimpl import oracle, ssm

rng0 = np.random.default_rng
H_CS = 1e-30
GRADS = ("du", "ddelta", "dA", "dB", "dC")


# ---- an independent reference in the official layout ------------------------------------------------


def softplus(x):
    return np.log(1.0 + np.exp(x))  # holomorphic; exact in float64 for the x < 100 used here


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def per_channel(X, batch, dim, N, L):
    """B or C of one of the official forms as (batch, D, N, L): channel d reads group d // (D/G)."""
    if X.ndim == 2:  # (D, N): constant in time
        return np.broadcast_to(X[None, :, :, None], (batch, dim, N, L))
    if X.ndim == 3:  # (batch, N, L): one group
        X = X[:, None]
    return np.repeat(X, dim // X.shape[1], axis=1)


def gated(y, u, D, z):
    """(y + D u) silu(z), Eq. (11.23), each part optional."""
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * z * sigmoid(z)
    return y


def step_sizes(delta, delta_bias, delta_softplus):
    """Δ = softplus(delta + delta_bias), Eq. (11.21), each part optional."""
    x = delta if delta_bias is None else delta + delta_bias[:, None]
    return softplus(x) if delta_softplus else x


def ref_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's semantics with a real A, step by step: out (batch, D, L); any argument may be complex (the
    complex step)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    dt = step_sizes(delta, delta_bias, delta_softplus)
    Bc, Cc = per_channel(B, batch, dim, N, L), per_channel(C, batch, dim, N, L)
    ct = np.result_type(u, dt, A, Bc, Cc, float)
    h = np.zeros((batch, dim, N), ct)
    y = np.zeros((batch, dim, L), ct)
    for t in range(L):
        h = np.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bc[..., t]  # (11.14), (11.16)
        y[:, :, t] = np.sum(Cc[..., t] * h, axis=-1)
    return gated(y, u, D, z)


def ref_fn_pairs(u, delta, Are, Aim, Bre, Bim, Cre, Cim, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The same with a complex A = Are + i Aim, B = Bre + i Bim, C = Cre + i Cim given as real parts (each in one of
    the official forms), every complex product written out: y_t = 2 Re Σ_n C h (Eq. (11.22)), analytic in each part."""
    batch, dim, L = u.shape
    N = Are.shape[1]
    dt = step_sizes(delta, delta_bias, delta_softplus)
    br, bi, cr, ci = (per_channel(X, batch, dim, N, L) for X in (Bre, Bim, Cre, Cim))
    ct = np.result_type(u, dt, Are, Aim, br, bi, cr, ci, float)
    hr, hi = np.zeros((batch, dim, N), ct), np.zeros((batch, dim, N), ct)
    y = np.zeros((batch, dim, L), ct)
    for t in range(L):
        s = dt[:, :, t, None]
        ar, ai = np.exp(s * Are) * np.cos(s * Aim), np.exp(s * Are) * np.sin(s * Aim)  # e^{Δ A}
        w = (dt[:, :, t] * u[:, :, t])[..., None]
        hr, hi = ar * hr - ai * hi + w * br[..., t], ar * hi + ai * hr + w * bi[..., t]
        y[:, :, t] = 2.0 * np.sum(cr[..., t] * hr - ci[..., t] * hi, axis=-1)
    return gated(y, u, D, z)


# ---- inputs ----------------------------------------------------------------------------------------------


def inputs(seed, batch=2, dim=4, L=7, N=3, B_form="shared", C_form="shared", options=True, hot=True, complex_A=False,
           storage="interleaved", G=2):
    """Arguments of selective_scan_fn_vjp. Forms: "invariant" (D, N), "shared" (batch, N, L), "grouped"
    (batch, G, N, L); a complex A gets complex B, C: "interleaved" real (…, 2L) storage or complex arrays.
    ``hot``: some steps with delta + delta_bias in (21, 60), above mamba_ssm's softplus threshold."""
    r = rng0(seed)
    kw = dict(u=r.standard_normal((batch, dim, L)), A=-np.exp(r.standard_normal((dim, N))))
    if complex_A:
        kw["A"] = kw["A"] + 1j * np.pi * r.standard_normal((dim, N))

    def make(form):
        if form == "invariant":
            X = r.standard_normal((dim, N))
            return X + 1j * r.standard_normal((dim, N)) if complex_A else X
        shape = (batch, N, L) if form == "shared" else (batch, G, N, L)
        if complex_A and storage == "interleaved":
            return r.standard_normal(shape[:-1] + (2 * L,))
        X = r.standard_normal(shape)
        return X + 1j * r.standard_normal(shape) if complex_A else X

    kw["B"], kw["C"] = make(B_form), make(C_form)
    kw["dout"] = r.standard_normal((batch, dim, L))
    if not options:
        kw["delta"] = r.uniform(0.05, 1.0, (batch, dim, L))
        return kw, {}
    opts = dict(D=r.standard_normal(dim), z=r.standard_normal((batch, dim, L)), delta_bias=r.normal(0.5, 0.5, dim),
                delta_softplus=True)
    delta = r.normal(-1.0, 1.0, (batch, dim, L))
    if hot:
        mask = r.random(delta.shape) < 0.2
        delta = np.where(mask, r.uniform(21.0, 60.0, delta.shape) - opts["delta_bias"][:, None], delta)
    kw["delta"] = delta
    return kw, opts


def call(fn, kw, opts):
    return fn(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["dout"], **opts)


def close(a, b, rtol, what=""):
    err = np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-300)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"
    return err


def complex_step(loss, args: dict, grads: dict, seed=0, ndir=3, rtol=1e-11) -> float:
    """Σ grad·e against Im ℓ(args + i h e)/h for random directions e of each argument in ``grads``; the largest
    relative error."""
    r = rng0(seed)
    worst = 0.0
    for name, grad in grads.items():
        for _ in range(ndir):
            e = r.standard_normal(np.shape(args[name]))
            want = loss({**args, name: np.asarray(args[name]) + 1j * H_CS * e}).imag / H_CS
            got = float(np.sum(grad * e))
            err = abs(got - want) / max(abs(want), 1e-12)
            assert err <= rtol, (name, got, want, err)
            worst = max(worst, err)
    return worst


# ---- 1-2. gradients by the complex step of the reference ---------------------------------------------


LAYOUTS = [("shared", "shared"), ("grouped", "grouped"), ("invariant", "invariant"), ("grouped", "invariant"),
           ("invariant", "shared")]


@pytest.mark.parametrize("options", [True, False], ids=["D_z_bias_softplus", "none"])
@pytest.mark.parametrize("B_form, C_form", LAYOUTS)
def test_real_A_gradients_by_complex_step(B_form, C_form, options):
    kw, opts = inputs(1, B_form=B_form, C_form=C_form, options=options, G=2)
    g = call(ssm.selective_scan_fn_vjp, kw, opts)
    assert list(g) == list(GRADS) + (["dD", "dz", "ddelta_bias"] if options else [])
    args = {k: v for k, v in {**kw, **opts}.items() if k not in ("dout", "delta_softplus")}
    for name in args:
        assert g["d" + name].shape == np.shape(args[name]) and g["d" + name].dtype == np.float64, name

    def loss(a):
        return np.sum(ref_fn(**a, delta_softplus=bool(opts)) * kw["dout"])

    complex_step(loss, args, {name: g["d" + name] for name in args})
    if options:  # some steps crossed mamba_ssm's threshold: the exact σ there, not the kernel's 1
        x = kw["delta"] + opts["delta_bias"][:, None]
        assert (x > 20).sum() >= 5


@pytest.mark.parametrize("B_form, C_form, storage", [("shared", "grouped", "interleaved"),
                                                     ("grouped", "invariant", "complex"),
                                                     ("invariant", "shared", "interleaved")])
def test_complex_A_gradients_by_complex_step_on_the_real_and_imaginary_parts(B_form, C_form, storage):
    kw, opts = inputs(2, L=6, B_form=B_form, C_form=C_form, complex_A=True, storage=storage)
    g = call(ssm.selective_scan_fn_vjp, kw, opts)
    L = kw["u"].shape[-1]
    args = {k: v for k, v in {**kw, **opts}.items() if k not in ("dout", "delta_softplus", "A", "B", "C")}
    grads = {name: g["d" + name] for name in args}
    args.update(Are=kw["A"].real, Aim=kw["A"].imag)
    grads.update(Are=g["dA"].real, Aim=g["dA"].imag)  # ∂ℓ/∂Re A + i ∂ℓ/∂Im A
    assert g["dA"].dtype == np.complex128
    parts = {}
    for name in ("B", "C"):
        X, dX = kw[name], g["d" + name]
        assert dX.shape == X.shape and np.iscomplexobj(dX) == np.iscomplexobj(X), name
        if np.iscomplexobj(X):  # a complex array: the gradient ∂ℓ/∂Re + i ∂ℓ/∂Im
            args.update({name + "re": X.real, name + "im": X.imag})
            grads.update({name + "re": dX.real, name + "im": dX.imag})
        else:  # real (re, im) pairs interleaved along time: the gradients of the stored numbers
            assert X.shape[-1] == 2 * L
            args[name] = X
            grads[name] = dX
            parts[name] = True

    def split(a, name):
        if name in parts:
            return a[name][..., 0::2], a[name][..., 1::2]
        return a[name + "re"], a[name + "im"]

    def loss(a):
        (Bre, Bim), (Cre, Cim) = split(a, "B"), split(a, "C")
        out = ref_fn_pairs(a["u"], a["delta"], a["Are"], a["Aim"], Bre, Bim, Cre, Cim, a["D"], a["z"],
                           a["delta_bias"], True)
        return np.sum(out * kw["dout"])

    complex_step(loss, args, grads)


def test_interleaved_storage_and_complex_arrays_give_the_same_gradients():
    # the kernel's storage of a complex B: real (…, 2L), (re, im) pairs; its gradient is stored alike
    kw, opts = inputs(3, B_form="grouped", C_form="shared", complex_A=True, storage="interleaved")
    pairs = lambda X: X[..., 0::2] + 1j * X[..., 1::2]  # noqa: E731
    as_complex = {**kw, "B": pairs(kw["B"]), "C": pairs(kw["C"])}
    g, gc = call(ssm.selective_scan_fn_vjp, kw, opts), call(ssm.selective_scan_fn_vjp, as_complex, opts)
    for name in ("dB", "dC"):
        np.testing.assert_array_equal(g[name][..., 0::2], gc[name].real)
        np.testing.assert_array_equal(g[name][..., 1::2], gc[name].imag)
    for name in ("du", "ddelta", "dA", "dD", "dz", "ddelta_bias"):
        np.testing.assert_array_equal(g[name], gc[name])


def test_real_B_with_a_complex_A_gets_the_real_part():
    # a real time-invariant B with a complex A is taken as complex with zero imaginary part: its gradient is ∂ℓ/∂B
    kw, opts = inputs(4, B_form="invariant", C_form="invariant", complex_A=True)
    real_B = {**kw, "B": kw["B"].real}
    g = call(ssm.selective_scan_fn_vjp, real_B, opts)
    gc = call(ssm.selective_scan_fn_vjp, {**kw, "B": kw["B"].real + 0j}, opts)
    assert g["dB"].dtype == np.float64 and gc["dB"].dtype == np.complex128
    np.testing.assert_array_equal(g["dB"], gc["dB"].real)


def test_softplus_derivative_is_the_exact_sigmoid_above_the_threshold():
    # refimpl's forward applies the exact softplus (mamba_ssm: x itself above 20), so its backward multiplies by
    # σ(x) everywhere (the kernel: 1 above 20): they differ by 1 − σ(x) < 2.1e-9 there
    kw, opts = inputs(5, hot=True)
    g = call(ssm.selective_scan_fn_vjp, kw, opts)
    x = kw["delta"] + opts["delta_bias"][:, None]
    plain = dict(opts, delta_bias=None, delta_softplus=False)
    g_step = call(ssm.selective_scan_fn_vjp, {**kw, "delta": np.logaddexp(0.0, x)}, plain)  # the gradient in Δ
    close(g["ddelta"], g_step["ddelta"] / (1.0 + np.exp(-x)), 1e-14, "ddelta = dΔ σ(x)")
    hot = x > 20
    ratio = g["ddelta"][hot] / g_step["ddelta"][hot]
    assert hot.sum() >= 5 and np.all((ratio <= 1.0) & (ratio > 1.0 - 2.1e-9))
    close(g["ddelta_bias"], g["ddelta"].sum(axis=(0, 2)), 1e-14, "ddelta_bias")


# ---- 3-4. the loop twin; refimpl's selective_scan_vjp after the mapping -------------------------------


@pytest.mark.parametrize("complex_A", [False, True])
@pytest.mark.parametrize("B_form, C_form", [("shared", "grouped"), ("invariant", "grouped"), ("grouped", "invariant")])
def test_loop_twin_agrees(B_form, C_form, complex_A, monkeypatch):
    kw, opts = inputs(6, batch=2, dim=6, L=23, N=3, B_form=B_form, C_form=C_form, complex_A=complex_A, G=3)
    gl = call(ssm.selective_scan_fn_vjp_loop, kw, opts)
    for block in (None, 2 * 6 * 3 * 5):  # one block; blocks of 5 (complex: 2) steps, a shorter last one
        if block is not None:
            monkeypatch.setattr(vjp_module, "_SEL_BLOCK_FLOATS", block)
        g = call(ssm.selective_scan_fn_vjp, kw, opts)
        assert list(g) == list(gl)
        for name in g:
            assert g[name].dtype == gl[name].dtype, name
            close(g[name], gl[name], 1e-12, f"{name}, block {block}")


@pytest.mark.parametrize("complex_A", [False, True])
@pytest.mark.parametrize("B_form, C_form, G", [("grouped", "shared", 6), ("shared", "grouped", 2),
                                               ("invariant", "grouped", 3), ("grouped", "invariant", 2)])
def test_wide_channels_in_blocks_agree_with_the_loop_twin_for_any_thread_count(B_form, C_form, G, complex_A,
                                                                               monkeypatch):
    # 300 channels: blocks of channels taken in turn by the threads (_vjp._fn_scan_vjp), each made of whole groups
    # of B or C (G = 6, 3: the block's own gradient rows) or inside one (G = 2: the blocks' parts of a group's
    # gradient added in block order); the same bits with 1, 2 or 3 threads
    import refimpl._blocking as blocking

    monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 0)
    kw, opts = inputs(9, batch=2, dim=300, L=9, N=3, B_form=B_form, C_form=C_form, complex_A=complex_A, G=G)
    assert len(ssm._scan_channel_blocks(300, *(300 if f == "invariant" else G if f == "grouped" else 1
                                               for f in (B_form, C_form)), limit=128)) > 1
    gl = call(ssm.selective_scan_fn_vjp_loop, kw, opts)
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(blocking, "THREADS", threads)
        runs.append(call(ssm.selective_scan_fn_vjp, kw, opts))
    for name in gl:
        close(runs[0][name], gl[name], 1e-12, name)
        assert all(np.array_equal(run[name], runs[0][name]) for run in runs[1:]), name


def test_equals_selective_scan_vjp_after_the_mapping():
    # shared real B, C (batch, N, L), Δ given directly: refimpl's layout with the last two axes swapped (§11.10)
    kw, _ = inputs(7, B_form="shared", C_form="shared", options=False)
    Dv = rng0(8).standard_normal(kw["u"].shape[1])
    g = call(ssm.selective_scan_fn_vjp, kw, {"D": Dv})
    t = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731
    ref = ssm.selective_scan_vjp(t(kw["u"]), t(kw["delta"]), kw["A"], t(kw["B"]), t(kw["C"]), Dv, t(kw["dout"]))
    for name in ("du", "ddelta", "dB", "dC"):
        close(g[name], t(ref[name]), 1e-13, name)
    close(g["dA"], ref["dA"], 1e-13, "dA")
    close(g["dD"], ref["dD"], 1e-13, "dD")


# ---- 5. bad input, named in the official terms ---------------------------------------------------------


def test_bad_input_names_the_official_argument():
    kw, opts = inputs(9, B_form="grouped", C_form="shared")
    f = lambda **over: ssm.selective_scan_fn_vjp(**{**kw, **opts, **over})  # noqa: E731
    for over, exc, match in [
        (dict(dout=np.swapaxes(kw["dout"], 1, 2)), ValueError, r"^dout: expected shape \(batch, D, L\) like u"),
        (dict(dout=kw["dout"][..., :-1]), ValueError, "^dout: expected shape"),
        (dict(dout=kw["dout"] + 1j), TypeError, "^dout: expected real"),
        (dict(dout=np.where(np.arange(7) == 3, np.nan, kw["dout"])), ValueError, "^dout"),
        (dict(u=np.swapaxes(kw["u"], 1, 2)), ValueError, "^delta: expected the shape of u"),
        (dict(B=kw["B"][:, :, :, :-1]), ValueError, "^B: expected last axis L"),
        (dict(B=kw["B"][:, :1].repeat(3, axis=1)), ValueError, "^B: its G = 3 groups do not divide"),
        (dict(C=kw["C"] + 1j), TypeError, "^C: complex values need a complex A"),
        (dict(A=-kw["A"]), ValueError, r"^A: expected a stable diagonal"),
        (dict(D=np.ones(3)), ValueError, r"^D: expected shape \(4,\)"),
        (dict(z=kw["u"][:, :-1]), ValueError, "^z: expected the shape of u"),
        (dict(delta_bias=np.ones((4, 1))), ValueError, r"^delta_bias: expected shape \(4,\)"),
        (dict(delta_softplus="yes"), TypeError, "^delta_softplus"),
    ]:
        with pytest.raises(exc, match=match):
            f(**over)
    with pytest.raises(ValueError, match="^delta, delta_bias, delta_softplus: expected step sizes"):
        f(delta_softplus=False, delta_bias=np.full(4, -100.0))
    with pytest.raises(TypeError):
        ssm.selective_scan_fn_vjp(*(kw[n] for n in ("u", "delta", "A", "B", "C", "dout")), None, None, None, True)
    with pytest.raises(TypeError):
        f(return_last_state=True)  # the forward's flag: no last state, so no cotangent for it
    ck, co = inputs(10, B_form="shared", C_form="shared", complex_A=True)
    with pytest.raises(ValueError, match="^B: with a complex A a real B holds"):
        ssm.selective_scan_fn_vjp(**{**ck, **co, "B": ck["B"][..., :-2]})


# ---- 6. the oracle ---------------------------------------------------------------------------------------


def _round(res, tier):
    return {k: oracle.round_to(v, tier) for k, v in res.items()}


def test_golden_cases():
    names = oracle.case_names("ssm.selective_scan_fn_vjp")
    assert [n.split("/")[1] for n in names] == ["long_L2049_gated", "shared_gated", "grouped",
                                                "time_invariant_threshold", "complex_interleaved"]
    report = oracle.compare("ssm.selective_scan_fn_vjp", ssm.selective_scan_fn_vjp)
    assert report.passed, report.table()
    loop = oracle.compare("ssm.selective_scan_fn_vjp", ssm.selective_scan_fn_vjp_loop)
    assert loop.passed, loop.table()
    args, _ = oracle.compute("ssm.selective_scan_fn_vjp/time_invariant_threshold")
    x = args["delta"] + args["delta_bias"][:, None]
    # above the kernel's threshold 20, and one step above 88.7, where a float32 e^x without the threshold overflows
    assert 5 <= (x > 20).sum() and (x > 88.8).any() and x.max() < 95


@pytest.mark.parametrize("tier", ["float32", "bfloat16"])
def test_rounded_refimpl_passes_with_plain_models(tier):
    report = oracle.compare("ssm.selective_scan_fn_vjp", lambda **kw: _round(ssm.selective_scan_fn_vjp(**kw), tier),
                            dtype=tier)
    assert report.passed, report.table()
    for c in report.cases:
        models = [(q.name, q.model) for q in c.quantities]
        assert c.quantities and all(m == f"plain {tier}" for _, m in models), models


def _no_softplus_derivative(**kw):  # ddelta left as the gradient in Δ
    g = ssm.selective_scan_fn_vjp(**kw)
    x = kw["delta"] + (0 if kw.get("delta_bias") is None else kw["delta_bias"][:, None])
    return {**g, "ddelta": g["ddelta"] * (1.0 + np.exp(-x))}


def _gate_without_skip(**kw):  # dz from y alone: the gate's input without D u
    g = ssm.selective_scan_fn_vjp(**kw)
    s = 1.0 / (1.0 + np.exp(-kw["z"]))
    return {**g, "dz": g["dz"] - kw["dout"] * kw["D"][:, None] * kw["u"] * s * (1.0 + kw["z"] * (1.0 - s))}


def _dB_of_the_first_channel_of_each_group(**kw):  # dB not summed over the channels of a group
    B = kw["B"]
    g = ssm.selective_scan_fn_vjp(**{**kw, "B": np.repeat(B, kw["u"].shape[1] // B.shape[1], axis=1)})
    return {**ssm.selective_scan_fn_vjp(**kw), "dB": g["dB"][:, :: kw["u"].shape[1] // B.shape[1]]}


def _conjugated_dA(**kw):  # the Wirtinger derivative ∂ℓ/∂A instead of ∂ℓ/∂Re A + i ∂ℓ/∂Im A
    g = ssm.selective_scan_fn_vjp(**kw)
    return {**g, "dA": np.conj(g["dA"])}


@pytest.mark.parametrize("tier", ["float32", "bfloat16"])
@pytest.mark.parametrize("case, bug, quantity", [
    ("shared_gated", _no_softplus_derivative, "ddelta"),
    ("shared_gated", _gate_without_skip, "dz"),
    ("grouped", _dB_of_the_first_channel_of_each_group, "dB"),
    ("complex_interleaved", _conjugated_dA, "dA"),
])
def test_planted_bugs_fail(case, bug, quantity, tier):
    report = oracle.compare("ssm.selective_scan_fn_vjp", lambda **kw: _round(bug(**kw), tier), dtype=tier, cases=case)
    c = report.cases[0]
    assert c.status == "fail" and c.first_failure == quantity, (c.status, c.message, c.first_failure)


def test_random_inputs():
    """The forward function's inputs (same seed and sizes) plus the cotangent dout from the seed's second stream;
    refimpl's own backward pass passes compare in float64 and bfloat16, a gradient 1% (25%) off fails there."""
    sizes = dict(L=300, d_in=4, n=8, batch=2, gated=True)
    inp = oracle.random_inputs("ssm.selective_scan_fn_vjp", seed=3, **sizes)
    forward = oracle.random_inputs("ssm.selective_scan_fn", seed=3, **sizes)
    assert inp.keys() == forward.keys() | {"dout"}
    assert all(np.array_equal(inp[k], v) if isinstance(v, np.ndarray) else inp[k] == v for k, v in forward.items())
    np.testing.assert_array_equal(inp["dout"], np.random.default_rng((3, 1)).standard_normal((2, 4, 300)))
    assert inp["dout"].shape == ssm.selective_scan_fn(**forward).shape
    for dtype, factor in (("float64", 1.01), ("bfloat16", 1.25)):  # bfloat16's ε is 2^-7 ≈ 0.8%
        assert oracle.compare("ssm.selective_scan_fn_vjp", ssm.selective_scan_fn_vjp, inputs=inp, dtype=dtype).passed
        for grad in ("ddelta", "dA", "dB", "ddelta_bias"):
            def off(**kw):
                return {n: v * factor if n == grad else v for n, v in ssm.selective_scan_fn_vjp(**kw).items()}

            bad = oracle.compare("ssm.selective_scan_fn_vjp", off, inputs=inp, dtype=dtype).cases[0]
            assert bad.status == "fail" and bad.first_failure == grad, (dtype, grad, bad.first_failure)
    with pytest.raises(ValueError, match=r"sizes: unknown \['width'\] for ssm.selective_scan_fn_vjp"):
        oracle.random_inputs("ssm.selective_scan_fn_vjp", seed=0, width=3)
