"""The shipped manifest is valid, and malformed manifests are rejected with the reason."""

from __future__ import annotations

import pytest

from sglang_sm120.manifest import ManifestError, Patch, _validate, load_manifest, release_of

BASE = {"supported_releases": ["0.5.12", "0.5.16"]}


def entry(**kw):
    e = {"id": "x.y", "family": "x", "kind": "replace", "target": "m:f", "impl": "i:f",
         "releases": ["0.5.12"], "when": "plugin"}
    e.update(kw)
    return e


def test_shipped_manifest_is_valid():
    m = load_manifest()
    assert m.supported_releases == ("0.5.12", "0.5.16")
    assert {"env-defaults", "deepgemm-off", "emulate", "poison-deep-gemm"} <= set(m.families())
    for p in m.patches:
        assert isinstance(p, Patch) and p.releases


@pytest.mark.parametrize(
    "bad, needle",
    [
        (entry(kind="patch"), "kind 'patch'"),
        (entry(kind="env", value=None), "env patches, and only they"),
        (entry(kind="env", when="bootstrap"), "env patch needs a value"),
        (entry(impl=None), "needs an impl"),
        (entry(target="nomodule"), "module:qualname"),
        (entry(releases=["0.5.99"]), "not all in supported_releases"),
        (entry(condition="always"), "condition 'always'"),
    ],
)
def test_rejects_malformed_entries(bad, needle):
    with pytest.raises(ManifestError, match=needle):
        _validate({**BASE, "patch": [bad]}, "test")


def test_rejects_duplicates_and_split_import_families():
    with pytest.raises(ManifestError, match="duplicate"):
        _validate({**BASE, "patch": [entry(), entry()]}, "test")
    split = [entry(id="a", when="import", target="m1:f"), entry(id="b", when="import", target="m2:f")]
    with pytest.raises(ManifestError, match="spans modules"):
        _validate({**BASE, "patch": split}, "test")


def test_release_of():
    assert release_of("0.5.16.post1") == "0.5.16"
    assert release_of("0.5.12") == "0.5.12"


def test_op_files_merge_into_one_manifest(tmp_path):
    (tmp_path / "manifest.toml").write_text('supported_releases = ["0.5.12"]\n')
    (tmp_path / "op.toml").write_text(
        '[[patch]]\nid = "op.f"\nfamily = "op"\nkind = "replace"\ntarget = "m:f"\nimpl = "i:f"\n'
        'releases = ["0.5.12"]\nwhen = "plugin"\n'
    )
    m = load_manifest.__wrapped__(str(tmp_path / "manifest.toml"))
    assert [p.id for p in m.patches] == ["op.f"]
    (tmp_path / "bad.toml").write_text('supported_releases = ["0.5.16"]\n')
    with pytest.raises(ManifestError, match="only \\[\\[patch\\]\\] entries"):
        load_manifest.__wrapped__(str(tmp_path / "manifest.toml"))
