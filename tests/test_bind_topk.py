"""Top-k transform bindings (patches/topk.toml) against SGLang 0.5.12 / 0.5.16.

SGLang's own vectorised torch fallback (executed from the release source) must select the same set per
row (it returns them in ``torch.topk`` order, ours ascending); with the plugin under emulate, the name
``forward_c4_indexer`` calls resolves to ours (the full call path is in test_bind_indexer.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from sglang_env import run_py
from test_bind_indexer import EMULATE, INDEXER_PY, sglang_function

from sglang_sm120.bindings.indexer import topk_transform_512
from sglang_sm120.reference.topk import topk_transform_ref


def make_case(lens: list[int], width: int, k: int, seed: int = 0):
    """scores [T, width] fp32 (-inf past each length, as our logits), seq_lens [T] i32, page_table [T, width/64]."""
    g = torch.Generator().manual_seed(seed)
    t, p = len(lens), width // 64
    scores = torch.randn(t, width, generator=g)
    sl = torch.tensor(lens, dtype=torch.int32)
    scores[torch.arange(width)[None, :] >= sl[:, None]] = float("-inf")
    pt = torch.stack([torch.randperm(4 * p, generator=g)[:p] for _ in range(t)]).int()
    out = torch.full((t, k), 7, dtype=torch.int32)
    return scores, sl, pt, out


@pytest.mark.parametrize("k", [512, 1024])
def test_binding_cpu_is_the_reference(k):
    scores, sl, pt, out = make_case([0, 1, k - 1, k, k + 1, 3000], 3072, k)
    raw = torch.empty_like(out)
    topk_transform_512(scores, sl[:, None], pt, out, 64, raw)
    exp, exp_raw = torch.empty_like(out), torch.empty_like(out)
    topk_transform_ref(scores, sl, pt, exp, 64, exp_raw)
    assert torch.equal(out, exp) and torch.equal(raw, exp_raw)
    assert (out[0] == -1).all() and (out[1, 1:] == -1).all() and (out[3] >= 0).all()
    again = torch.empty_like(out)
    topk_transform_512(scores, sl.long(), pt.long(), again, 64)  # int64 metadata is cast on device
    assert torch.equal(again, exp)


def test_binding_rejects_bad_lengths():
    scores, sl, pt, out = make_case([10, 20], 128, 512)
    with pytest.raises(ValueError, match="seq_lens: expected int32"):
        topk_transform_512(scores, sl.float(), pt, out, 64)


@pytest.mark.parametrize("version,k", [("0.5.16", 512), ("0.5.16", 1024), ("0.5.12", 512)])
def test_same_sets_as_sglang_torch_fallback(version, k):
    theirs_fn = sglang_function(version, INDEXER_PY, "topk_transform_512_pytorch_vectorized")
    scores, sl, pt, out = make_case([0, 5, k, k + 1, 2000, 4096], 4096, k, seed=k)
    raw, theirs, theirs_raw = torch.empty_like(out), torch.empty_like(out), torch.empty_like(out)
    topk_transform_512(scores, sl, pt, out, 64, raw)
    theirs_fn(scores, sl, pt, theirs, 64, theirs_raw)
    assert torch.equal(out.sort(1).values, theirs.sort(1).values)
    assert torch.equal(raw.sort(1).values, theirs_raw.sort(1).values)


CALL_SITE = r"""
import json, sys
import torch
try:
    import sglang.srt.layers.attention.dsv4.indexer as I
except Exception as exc:  # SGLang's DSV4 modules need its full runtime
    print(json.dumps({"skip": f"SGLang DSV4 modules cannot be imported here: {exc!r}"[:400]}))
    sys.exit(0)
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang_sm120.bindings.indexer import topk_transform_512 as ours
from sglang_sm120.reference.topk import topk_transform_ref
cells = [c.cell_contents for c in (I.topk_transform_512.__closure__ or ())]
g = torch.Generator().manual_seed(0)
scores, sl = torch.randn(3, 2048, generator=g), torch.tensor([100, 1500, 2048], dtype=torch.int32)
pt = torch.arange(96, dtype=torch.int32).reshape(3, 32)
out, exp = torch.empty(3, 512, dtype=torch.int32), torch.empty(3, 512, dtype=torch.int32)
I.topk_transform_512(scores, sl, pt, out, 64, None)  # SGLang's JIT kernel cannot run on a CPU tensor
topk_transform_ref(scores, sl, pt, exp, 64)
print(json.dumps({"ours": ours in cells, "equal": torch.equal(out, exp)}))
"""


@pytest.mark.parametrize("version", ["0.5.12", "0.5.16"])
def test_sglang_name_resolves_to_ours(version):
    proc = run_py(CALL_SITE, version, EMULATE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out == {"ours": True, "equal": True}
