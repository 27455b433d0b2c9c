"""A first argument in the wrong layout is named, not the later argument whose check reads its sizes from it.

The official interfaces read the sizes (batch, sequence, heads) from their first argument — mamba_ssm's ``x``,
fla's ``q``, FlashAttention's ``q`` — and check the later arguments against them. An ``x`` passed head-first,
(batch, nheads, seqlen, headdim), made the check of ``dt`` fail ("dt: expected shape (batch, seqlen, nheads) =
(1, 4, 2048) (sizes from x) ..."), although ``dt`` was right. When the later arguments agree with each other and
each disagrees with the first, the first is named, with the question whether it was passed in the other layout
when that reading fits them. A later argument that is wrong alone is still the one named.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from refimpl import attention as at
from refimpl import linear_rnn as lr
from refimpl import oracle

from _fla import fla_inputs as _fla_inputs  # noqa: E402 (tests/ is on sys.path)


def swap(a):
    return np.swapaxes(a, 1, 2)


def mamba_inputs(b=1, L=33, H=4, P=8, G=1, N=16):
    r = np.random.default_rng(1)
    return dict(x=r.standard_normal((b, L, H, P)), dt=r.normal(-0.5, 1.0, (b, L, H)), A=-np.exp(r.standard_normal(H)),
                B=r.standard_normal((b, L, G, N)), C=r.standard_normal((b, L, G, N)), chunk_size=16)


MAMBA = {"forward": lr.mamba_chunk_scan_combined, "loop": lr.mamba_chunk_scan_combined_loop,
         "vjp": lambda **kw: lr.mamba_chunk_scan_combined_vjp(**kw, dout=np.ones((1, 33, 4, 8)))}


@pytest.mark.parametrize("call", sorted(MAMBA))
def test_mamba_x_passed_head_first_is_named(call):
    kw = mamba_inputs()
    message = ("x: expected shape (batch, seqlen, nheads, headdim); its sizes (1, 4, 33, 8) disagree with dt (1, 33, 4), "
               "B (1, 33, 1, 16) and C (1, 33, 1, 16), which agree with each other: was x passed as (batch, nheads, "
               "seqlen, headdim)?")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        MAMBA[call](**{**kw, "x": swap(kw["x"])})


def test_mamba_x_of_another_length_is_named_without_the_layout_question():
    kw = mamba_inputs()
    with pytest.raises(ValueError, match=r"^x: expected shape .*; its sizes \(1, 32, 4, 8\) disagree with dt \(1, 33, 4\), "
                                         r"B \(1, 33, 1, 16\) and C \(1, 33, 1, 16\), which agree with each other$"):
        lr.mamba_chunk_scan_combined(**{**kw, "x": kw["x"][:, :-1]})


def test_mamba_a_later_argument_wrong_alone_is_named():
    kw = mamba_inputs()
    for over, match in [
        (dict(dt=swap(kw["dt"])), r"^dt: expected shape \(batch, seqlen, nheads\) = \(1, 33, 4\) \(sizes from x\)"),
        (dict(B=kw["B"][:, :-1]), r"^B: expected shape \(batch, seqlen, ngroups, dstate\)"),  # dt and C side with x
        (dict(C=kw["C"][:, :-1]), r"^C: expected shape .* like B"),
        (dict(B=kw["B"][:, :-1], C=kw["C"][:, :-1]), r"^B: expected shape"),  # B and C against x and dt: not outvoted
        # x with 8 heads: dt disagrees on nheads only, where B and C cannot tell which of x and dt is wrong
        (dict(x=np.concatenate([kw["x"], kw["x"]], axis=2)), r"^dt: expected shape \(batch, seqlen, nheads\) = \(1, 33, 8\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            lr.mamba_chunk_scan_combined(**{**kw, **over})


def fla_inputs(gate, delta):
    """q, k, v (and g, beta) in fla's layout, B = 1, T = 70, H = 2, K = 8, V = 4; fla's l2norm of the keys."""
    kw, opts = _fla_inputs(seed=2, B=1, T=70, H=2, K=8, V=4, gate=gate, delta=delta, l2norm=True, state=False)
    return {**kw, **opts}


FLA = {"chunk_gla": ("channel", False), "chunk_simple_gla": ("head", False), "chunk_delta_rule": ("none", True),
       "chunk_gated_delta_rule": ("head", True)}


@pytest.mark.parametrize("vjp", [False, True])
@pytest.mark.parametrize("name", sorted(FLA))
def test_fla_q_passed_head_first_is_named(name, vjp):
    kw = fla_inputs(*FLA[name])
    fn = getattr(lr, name + ("_vjp" if vjp else ""))
    extra = dict(do=np.ones(kw["v"].shape)) if vjp else {}
    later = [f"{n} {kw[n].shape}" for n in ("k", "v", "g", "beta") if n in kw]
    later = ", ".join(later[:-1]) + " and " + later[-1]  # "k (…), v (…) and g (…)"
    message = (f"q: expected shape [B, T, H, K]; its sizes (1, 2, 70, 8) disagree with {later}, which agree with "
               "each other: was q passed as [B, H, T, K] (head first)?")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fn(**{**kw, "q": swap(kw["q"])}, **extra)
    with pytest.raises(ValueError, match=r"^k: expected shape \[B, T, H, K\] with B, T, H = \(1, 70, 2\) from q, got "
                                         r"shape \(1, 2, 70, 8\): its T and H are q's exchanged — was k, or q"):
        fn(**{**kw, "k": swap(kw["k"]), "v": swap(kw["v"])}, **extra)  # k and v against q and a gate: k named


def test_fla_k_and_v_alone_do_not_outvote_q():
    """Keys and values usually share a layout: their agreement is no evidence against q. With no gate of its own
    (chunk_simple_gla with g_gamma alone) the check of k is named, as before, whichever of q or (k, v) is wrong."""
    kw = fla_inputs("none", False)
    for over in (dict(q=swap(kw["q"])), dict(k=swap(kw["k"]), v=swap(kw["v"]))):
        with pytest.raises(ValueError, match=r"^k: expected shape \[B, T, H, K\] with B, T, H = .* its T and H are "
                                             r"q's exchanged"):
            lr.chunk_simple_gla(**{**kw, **over}, g=None, g_gamma=-np.ones(2))


@pytest.mark.parametrize("vjp", [False, True])
def test_flash_attn_q_passed_head_first_is_named_where_only_its_reading_fits(vjp):
    """q and k may differ in seqlen and nheads (cross-attention, grouped-query attention): shapes cannot tell which
    of them has the wrong layout, except through nheads_k | nheads. Where only q read head-first fits k and v, q is
    named; where k and v read head-first would fit too, the message asks about both."""
    r = np.random.default_rng(3)
    q, k, v = r.standard_normal((1, 50, 8, 16)), r.standard_normal((1, 100, 8, 16)), r.standard_normal((1, 100, 8, 16))

    def call(q, k, v):
        return at.flash_attn_func_vjp(q, k, v, np.ones(q.shape[:3] + v.shape[3:])) if vjp else at.flash_attn_func(q, k, v)

    message = ("q: expected shape (batch, seqlen, nheads, headdim); its nheads = 50 is not a multiple of the nheads_k "
               "= 8 of k (1, 100, 8, 16) and v (1, 100, 8, 16), but its axis 1 (size 8) is: was q passed as (batch, "
               "nheads, seqlen, headdim)?")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call(swap(q), k, v)  # cross-attention: 50 queries, 100 keys
    hint = r"\(grouped-query attention\): was q, or were k and v, passed as \(batch, nheads, seqlen, headdim\)\?$"
    with pytest.raises(ValueError, match=r"^k: its nheads_k = 8 must divide the nheads = 100 of q " + hint):
        call(swap(k), k, v)  # self-attention, q head-first: its reading and that of k and v both fit
    with pytest.raises(ValueError, match=r"^k: its nheads_k = 100 must divide the nheads = 8 of q " + hint):
        call(k, swap(k), swap(v))
    with pytest.raises(ValueError, match=r"^k: its nheads_k = 100 must divide the nheads = 8 of q \(grouped-query "
                                         r"attention\): were k and v passed as \(batch, nheads, seqlen, headdim\)\?$"):
        call(q, swap(k), swap(v))  # only the reading of k and v fits
    with pytest.raises(ValueError, match=r"^k: its nheads_k = 3 must divide the nheads = 8 of q \(grouped-query "
                                         r"attention\)$"):
        call(q, k[:, :, :3], v[:, :, :3])  # no reading fits: no question


@pytest.mark.parametrize("function, sizes, hints", [
    ("linear_rnn.chunk_gla", dict(T=64, K=8, V=4), ["K is dk here", "T is L here", "V is dv here"]),
    ("linear_rnn.chunk_delta_rule_vjp", dict(T=64), ["T is L here"]),
    ("linear_rnn.mamba_chunk_scan_combined", dict(seqlen=64, nheads=2, headdim=8, dstate=4, ngroups=1),
     ["dstate is N here", "headdim is P here", "ngroups is G here", "nheads is H here", "seqlen is L here"]),
    ("attention.flash_attn_func", dict(seqlen=64), ["seqlen is seqlen_q here (and seqlen_k)"]),
    ("attention.softmax_attention", dict(seqlen=64, head_dim=8, dstate=4), ["head_dim is d here", "seqlen is N here"]),
])
def test_random_inputs_names_its_own_size_for_a_library_name(function, sizes, hints):
    """A kernel author types the library's size names (fla's T, K, V; mamba_ssm's seqlen, nheads, headdim…):
    the refusal says which of random_inputs' names it is, and gives none where the family has no such size
    (dstate is not softmax attention's N)."""
    with pytest.raises(ValueError, match=r"^sizes: unknown") as err:
        oracle.random_inputs(function, seed=0, **sizes)
    message = str(err.value)
    for hint in hints:
        assert hint in message
    assert "dstate is" not in message or "mamba" in function


# --------------------------------------------------------------------------------------------
# Inputs passed head first *consistently*: nothing to refuse, so a failing report says how they read
# --------------------------------------------------------------------------------------------


def _swapped(inputs):
    """The (batch, seqlen, heads, ·) tensors with their axes 1 and 2 exchanged (fla's beta and mamba_ssm's dt, three
    of them, too); the states keep their layout. Its own inverse."""
    return {k: swap(v) if isinstance(v, np.ndarray) and (v.ndim == 4 and k not in ("initial_state", "initial_states")
                                                         or v.ndim == 3 and k in ("dt", "beta")) else v
            for k, v in inputs.items()}


@pytest.mark.parametrize("function, sizes, first", [
    ("linear_rnn.chunk_gla", dict(L=256, H=2, dk=16, dv=16), "q"),
    ("linear_rnn.chunk_delta_rule_vjp", dict(L=256, H=2, dk=16, dv=16), "q"),
    ("attention.flash_attn_func", dict(seqlen_q=256, nheads=2, headdim=16), "q"),
])
def test_consistently_head_first_inputs_get_a_note_on_failure(function, sizes, first):
    """A kernel written for (batch, heads, seqlen, dim), given its own head-first tensors: every input agrees with
    every other, refimpl reads the heads as time and the case fails; the report says how the first input reads."""
    inputs = oracle.random_inputs(function, seed=0, **sizes)
    head_first = _swapped(inputs)
    ref = getattr(lr if function.startswith("linear_rnn") else at, function.split(".")[1])
    report = oracle.compare(function, ref_on_swapped(ref), inputs=head_first)
    case = report.cases[0]
    assert case.status == "fail"
    shape = head_first[first].shape
    assert case.message.startswith(f"{first} {shape} reads as {shape[1]} steps of {shape[2]} heads")
    assert "swap axes 1 and 2" in str(report)


def ref_on_swapped(ref):
    """The kernel: refimpl on its head-first inputs swapped back, its outputs swapped to head first."""
    def kernel(**kw):
        res = ref(**_swapped(kw))
        if isinstance(res, dict):
            return {k: swap(v) if np.ndim(v) == 4 and k not in ("dh0",) else v for k, v in res.items()}
        res = res if isinstance(res, tuple) else (res,)
        return tuple(swap(v) if np.ndim(v) == 4 and i == 0 else v for i, v in enumerate(res))
    return kernel


def test_no_note_in_the_library_layout_or_when_decoding():
    inputs = oracle.random_inputs("linear_rnn.chunk_gla", seed=0, L=256, H=2, dk=16, dv=16)
    wrong = lambda **kw: (1.01 * lr.chunk_gla(**kw)[0],)  # noqa: E731 — fails, in fla's layout
    assert oracle.compare("linear_rnn.chunk_gla", wrong, inputs=inputs).cases[0].message == ""
    one = oracle.random_inputs("linear_rnn.chunk_gla", seed=0, L=1, H=8, dk=16, dv=16)  # one step, 8 heads: decoding
    assert oracle.compare("linear_rnn.chunk_gla", wrong, inputs=one).cases[0].message == ""
    assert oracle.compare("linear_rnn.chunk_gla", lr.chunk_gla, inputs=_swapped(inputs)).passed  # passing: no note


@pytest.mark.parametrize("call", sorted(MAMBA))
def test_mamba_x_and_dt_passed_head_first_are_named_at_A(call):
    """mamba_ssm's A (nheads,) cannot follow a head-first x and dt: the check of A says they look passed head
    first (A's length is x's seqlen as x reads), instead of only expecting (seqlen,)."""
    kw = mamba_inputs()
    kw.update(x=swap(kw["x"]), dt=swap(kw["dt"]), B=swap(kw["B"]), C=swap(kw["C"]))  # every (b, L, ·) tensor
    with pytest.raises(ValueError, match=re.escape("A: expected shape (nheads,) = (33,) (nheads from x), got shape "
                                                   "(4,): its length is x's seqlen as x reads")) as info:
        MAMBA[call](**kw)
    assert "were x and dt passed head first" in str(info.value)


def test_fla_t_and_h_exchanged_are_said_so():
    """Tensors of fla's interfaces with T and H exchanged against q's are named with the exchange; with every
    tensor head first, the states' check says H is q's T as read (before: only the expected shape, "(N = B)")."""
    inp = oracle.random_inputs("linear_rnn.chunk_gla", seed=0, L=130, H=2, dk=8, dv=8, states=True)
    everything = {**inp, **{n: swap(inp[n]) for n in ("q", "k", "v", "g")}}
    with pytest.raises(ValueError, match=re.escape("initial_state: expected shape [N, H, K, V] = (1, 130, 8, 8) (N = B: "
                                                   "one state per sequence; H, K from q, V from v), got shape (1, 2, 8, "
                                                   "8): its H is q's T as q reads, q (1, 2, 130, 8) [B, T, H, K] — were "
                                                   "q, k, v passed head first, [B, H, T, ·]?")):
        lr.chunk_gla(**everything)
    for wrong in ({"q": swap(inp["q"]), "k": swap(inp["k"])}, {"v": swap(inp["v"])}):
        with pytest.raises(ValueError, match=r"^v: expected shape \[B, T, H, V\] with B, T, H = .* its T and H are q's "
                                             r"exchanged — was v, or q \(with the arguments that agree with it\), passed "
                                             r"head first"):
            lr.chunk_gla(**{**inp, **wrong})
    beta = oracle.random_inputs("linear_rnn.chunk_delta_rule", seed=0, L=70, H=2, dk=8, dv=8)
    with pytest.raises(ValueError, match=r"^beta: .* its T and H are q's exchanged"):
        lr.chunk_delta_rule(**{**beta, "beta": np.swapaxes(beta["beta"], 1, 2)})
    report = oracle.compare("linear_rnn.chunk_gla", lr.chunk_gla, dtype="float32", inputs=everything)
    assert report.cases[0].status == "error" and "were q, k, v passed head first" in str(report)
    assert "within the bounds of tier" not in str(report)  # nothing was compared: no tier to name
