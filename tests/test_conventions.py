"""The API convention of docs/conventions.md, checked on every public signature.

Every callable in ``__all__`` of every public module (``refimpl/<name>.py``, name not starting
with ``_``) is inspected, so a new function cannot escape the rules:

1. options are keyword-only: ``rng``, ``causal``, every ``return_*`` flag and every parameter
   whose default is a ``bool`` or a ``str`` (flags and mode selectors);
2. extra outputs are requested by ``return_<name>: bool = False``, ``<name>`` from the
   vocabulary ``RETURN_FLAGS`` (what the extra output is);
3. ``causal`` defaults to True exactly for the filters derived from a state-space model or a
   recurrence (``CAUSAL_BY_DEFAULT``) and to False for attention and token mixers
   (``BIDIRECTIONAL_BY_DEFAULT``); a new function with ``causal`` must be put in one of them;
4. a loop twin ``f_loop`` has exactly the signature of ``f`` (names, kinds, defaults,
   annotations);
5. every public function has an Examples section (run as a doctest).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import refimpl

P = inspect.Parameter

#: the extra outputs a ``return_<name>`` flag may add, and what they are
RETURN_FLAGS = {
    "weights": "the attention weight matrix A",
    "intermediates": "a dict of the named intermediate quantities, in the order of computation",
    "projections": "the input projections of a Hyena operator",
    "lse": "the row log-sum-exp of the attention logits (what fused kernels store for the backward pass)",
    "chunk_states": "the recurrent state at the end of each chunk of a chunked algorithm (the last: the final state)",
    "matrix": "the sequence-mixing matrix the algorithm applies (e.g. the semiseparable matrix of SSD)",
    "last_state": "the recurrent state after the last step",
    "final_states": "the recurrent states after the last step (Mamba-2's official name)",
    "varlen_states": "the recurrent state after the last step of each packed sequence (Mamba-2's official name)",
    "attn_probs": "FlashAttention-2's (softmax_lse, S_dmask) after the output (its official name)",
    "offset": "the constant term c of an affine map y = W z + c",
}

#: filters of a state-space model or recurrence: causal by default
CAUSAL_BY_DEFAULT = {
    "afa.afa", "afa.afa_loop", "afa.isotropic_afa", "afa.isotropic_afa_loop", "afa.afa_irls",
    "random_features.rfa_attention", "random_features.rfa_attention_loop",
}

#: attention and token mixers, defined bidirectionally by their papers: non-causal by default
BIDIRECTIONAL_BY_DEFAULT = {
    "attention.softmax_attention", "attention.softmax_attention_loop", "attention.attention_weights",
    *(f"attention.flash_attn_{f}{s}" for f in ("func", "varlen_func", "func_vjp", "varlen_func_vjp") for s in ("", "_loop")),
    "attention.multihead_attention", "attention.multihead_attention_loop",
    "mixing.spatial_gating_unit", "mixing.spatial_gating_unit_loop",
    "random_features.linear_attention", "random_features.linear_attention_loop",
    "random_features.performer_attention", "random_features.performer_attention_loop",
    "random_features.performer_attention_quadratic",
    "random_features.lsh_attention", "random_features.lsh_attention_loop",
    "attention.flash_attention", "attention.flash_attention_loop",
    "attention.softmax_attention_vjp", "attention.softmax_attention_vjp_loop",
    "random_features.linear_attention_vjp", "random_features.linear_attention_vjp_loop",
}


def _public_functions():
    out = []
    for path in sorted(Path(refimpl.__file__).parent.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        mod = importlib.import_module(f"refimpl.{path.stem}")
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                out.append((f"{path.stem}.{name}", obj))
    return out


FUNCTIONS = _public_functions()
IDS = [q for q, _ in FUNCTIONS]


def _is_option(p: inspect.Parameter) -> bool:
    return (p.name in ("rng", "causal") or p.name.startswith("return_")
            or isinstance(p.default, (bool, str)))


def test_the_inventory_is_not_empty():
    assert len(FUNCTIONS) > 150, len(FUNCTIONS)


@pytest.mark.parametrize("qual, fn", FUNCTIONS, ids=IDS)
def test_options_are_keyword_only(qual, fn):
    bad = [p.name for p in inspect.signature(fn).parameters.values()
           if _is_option(p) and p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    assert not bad, f"{qual}: options {bad} must be keyword-only (after *)"


@pytest.mark.parametrize("qual, fn", FUNCTIONS, ids=IDS)
def test_extra_outputs_are_return_flags(qual, fn):
    for p in inspect.signature(fn).parameters.values():
        if p.name.startswith("return_"):
            assert p.name[len("return_"):] in RETURN_FLAGS, (
                f"{qual}: {p.name} is not in the vocabulary of extra outputs {sorted(RETURN_FLAGS)} "
                "(docs/conventions.md); add it there with its meaning, or name the flag after an existing output"
            )
            assert p.default is False, f"{qual}: {p.name} must default to False (the plain call returns the output only)"


@pytest.mark.parametrize("qual, fn", FUNCTIONS, ids=IDS)
def test_causal_default_follows_the_rule(qual, fn):
    params = inspect.signature(fn).parameters
    if "causal" not in params:
        assert qual not in CAUSAL_BY_DEFAULT | BIDIRECTIONAL_BY_DEFAULT, f"{qual}: listed but has no causal"
        return
    default = params["causal"].default
    assert qual in CAUSAL_BY_DEFAULT | BIDIRECTIONAL_BY_DEFAULT, (
        f"{qual}: a new function with causal: classify it in CAUSAL_BY_DEFAULT (a filter of a state-space "
        "model or recurrence) or BIDIRECTIONAL_BY_DEFAULT (attention or a token mixer), see docs/conventions.md"
    )
    assert default is (qual in CAUSAL_BY_DEFAULT), f"{qual}: causal defaults to {default!r}, against the rule"


def test_the_causal_lists_are_not_stale():
    names = set(IDS)
    assert not (CAUSAL_BY_DEFAULT | BIDIRECTIONAL_BY_DEFAULT) - names
    assert not CAUSAL_BY_DEFAULT & BIDIRECTIONAL_BY_DEFAULT


TWINS = [(q, fn, dict(FUNCTIONS)[q[: -len("_loop")]]) for q, fn in FUNCTIONS
         if q.endswith("_loop") and q[: -len("_loop")] in dict(FUNCTIONS)]


def test_there_are_loop_twins():
    assert len(TWINS) > 40, len(TWINS)


@pytest.mark.parametrize("qual, loop, vectorized", TWINS, ids=[t[0] for t in TWINS])
def test_loop_twin_has_the_vectorized_signature(qual, loop, vectorized):
    assert inspect.signature(loop) == inspect.signature(vectorized), (
        f"{qual}{inspect.signature(loop)} differs from {qual[:-5]}{inspect.signature(vectorized)}"
    )


@pytest.mark.parametrize("qual, fn", FUNCTIONS, ids=IDS)
def test_every_public_function_has_an_example(qual, fn):
    # the Examples run as doctests (pytest collects refimpl/ with --doctest-modules)
    assert ">>>" in (fn.__doc__ or ""), f"{qual}: add a short, deterministic Examples section at the end of its docstring"
