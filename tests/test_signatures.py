"""The canonical signature is the same whether read from a live object or from source."""

from __future__ import annotations

import ast
import functools
import textwrap

import pytest

from sglang_sm120 import signatures

SOURCES = [
    "def f(): pass",
    "def f(a, b=1, *args, c, d=2, **kw): pass",
    "def f(a, /, b, *, c): pass",
    "def f(a=1, /, b=2): pass",
    "def f(self, x, *, y=None, **kwargs): pass",
    "def f(*, only): pass",
]


@pytest.mark.parametrize("src", SOURCES)
def test_live_and_ast_agree(src):
    ns: dict = {}
    exec(src, ns)
    node = ast.parse(textwrap.dedent(src)).body[0]
    assert signatures.of_object(ns["f"]) == signatures.of_ast(node.args)


def test_form_and_wrapped():
    def base(self, q, k_cache, *, softmax_scale=0.1, **kwargs):
        pass

    @functools.wraps(base)
    def wrapper(*a, **k):
        return base(*a, **k)

    assert signatures.of_object(base) == "(self, q, k_cache, *, softmax_scale=..., **kwargs)"
    assert signatures.of_object(wrapper) == signatures.of_object(base)
