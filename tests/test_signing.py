"""Signed proof: a run's Ed25519 key (kept outside the run) signs each certificate and stage
record; `s3t certificates --verify` checks them offline (also on an export) and `s3t audit`
fails on a stage whose record the key did not sign, so a served stage forged consistently
(files, hashes, meta.json, ledger row) is caught. One training run for the whole module."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_audit_tamper import sample_in, sql
from test_cli_engine import invoke, write_csv
from tiny import toy_dataset

from s3t.run import Run
from s3t.run.files import sha256_file
from s3t.run.signing import ENV, SigningKeyError, key_id, load_signer, new_key

DATA = toy_dataset(40, groups=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    """The run's key and another one (both outside every run directory)."""
    root = tmp_path_factory.mktemp("keys")
    new_key(root / "run.key")
    new_key(root / "other.key")
    return root / "run.key", root / "other.key"


@pytest.fixture(scope="module")
def signed(tmp_path_factory, tiny_bert, keys):
    root = tmp_path_factory.mktemp("signed")
    run = root / "run"
    result = invoke("train", "--data", write_csv(root / "train.csv", DATA), "--out", run,
                    "--model", tiny_bert, "--shards", 2, "--slices", 2, "--budget", 2,
                    "--epochs", 1, "--batch-size", 8, "--lora-r", 2, "--lora-alpha", 4, "--json",
                    "--signing-key", keys[0])
    assert result.exit_code == 0, result.output
    assert ENV not in os.environ, "the option's key does not outlive the command"
    return run


@pytest.fixture
def run_dir(signed, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(signed, copy)
    return copy


def forget(run_dir: Path, key: Path, *ids: str) -> dict:
    result = invoke("forget", run_dir, "--ids", ",".join(ids), "--json", "--signing-key", key)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def audit(run_dir: Path) -> dict:
    return json.loads(invoke("audit", run_dir, "--json").stdout)


def unsign(run_dir: Path) -> None:
    """The same run as it would be without a key: its card names none."""
    card = json.loads((run_dir / "s3t.json").read_text())
    del card["signing_key"]
    (run_dir / "s3t.json").write_text(json.dumps(card))


def test_keys_new_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    made = invoke("keys", "new", tmp_path / "k", "--json")
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().strip() == info["public_key"]
    assert load_signer(tmp_path / "k").public == info["public_key"]
    again = invoke("keys", "new", tmp_path / "k")
    assert again.exit_code == 2 and "never overwritten" in again.stderr


def test_a_signed_run_signs_its_stages_and_certificates_and_audit_says_so(run_dir, keys):
    public = json.loads((run_dir / "s3t.json").read_text())["signing_key"]
    assert public == load_signer(keys[0]).public
    live = sql(run_dir, "SELECT key FROM stages WHERE status = 'live'")
    signed_keys = sql(run_dir, "SELECT key FROM stage_signatures")
    assert live and set(live) <= set(signed_keys)
    certificate = forget(run_dir, keys[0], sample_in(run_dir, 0, 0))
    assert set(certificate["signature"]) == {"key_id", "record", "outcome"}
    report = audit(run_dir)
    assert report["ok"], report["violations"]
    assert key_id(public) in report["signing"]
    text = invoke("audit", run_dir)
    assert text.exit_code == 0 and f"signed with ed25519 key {key_id(public)}" in text.output
    verified = invoke("certificates", run_dir, "--verify", "--public-key", f"{keys[0]}.pub")
    assert verified.exit_code == 0, verified.output
    assert "1 certificates and" in verified.output


def test_an_unsigned_run_works_and_audit_says_unsigned(run_dir, keys):
    unsign(run_dir)
    result = invoke("forget", run_dir, "--ids", sample_in(run_dir, 0, 0), "--json")
    assert result.exit_code == 0, result.output
    assert "signature" not in json.loads(result.stdout)
    text = invoke("audit", run_dir)
    assert text.exit_code == 0 and "records: unsigned" in text.output
    unverified = invoke("certificates", run_dir, "--verify")
    assert unverified.exit_code == 1 and "unsigned" in unverified.output


def test_a_writer_without_the_key_or_with_another_key_is_refused(run_dir, keys):
    victim = sample_in(run_dir, 0, 0)
    without = invoke("forget", run_dir, "--ids", victim)
    assert without.exit_code == 2 and "--signing-key" in without.stderr
    wrong = invoke("forget", run_dir, "--ids", victim, "--signing-key", keys[1])
    assert wrong.exit_code == 2 and "is not the key of" in wrong.stderr
    assert sql(run_dir, "SELECT COUNT(*) FROM deletions") == [(0,)], "nothing was written"
    inside = run_dir / "run.key"
    shutil.copy(keys[0], inside)
    misplaced = invoke("forget", run_dir, "--ids", victim, "--signing-key", inside)
    assert misplaced.exit_code == 2 and "inside the run directory" in misplaced.stderr
    retrain = invoke("retrain", run_dir, "--json")
    assert retrain.exit_code == 2 and "--signing-key" in retrain.stderr
    run = Run.open(run_dir)
    with pytest.raises(SigningKeyError, match="--signing-key"):
        run.forget(sample_ids=[victim])
    run.close()


def forge_served_stage(run_dir: Path) -> str:
    """Replace a served stage's adapter with other weights (as if trained on deleted data) and
    fix everything an unsigned audit checks: the file hashes in the ledger row; meta.json
    still agrees with the row."""
    shard, key = sql(run_dir, "SELECT shard, stage FROM routes WHERE stage IS NOT NULL")[0]
    other = sql(run_dir, "SELECT shard, key FROM stages WHERE status = 'live' AND key != ? "
                "AND length(prefix) = (SELECT length(prefix) FROM stages WHERE key = ?)",
                (key, key))[0]
    target = run_dir / "stages" / str(shard) / key
    shutil.copy(run_dir / "stages" / str(other[0]) / other[1] / "adapter.safetensors",
                target / "adapter.safetensors")
    hashes = {p.name: sha256_file(p) for p in target.iterdir()}
    sql(run_dir, "UPDATE stages SET files = ? WHERE key = ?", (json.dumps(hashes), key))
    return key


def test_a_consistently_forged_stage_fails_audit_with_a_key_and_passes_without(run_dir,
                                                                                tmp_path):
    key = forge_served_stage(run_dir)
    report = audit(run_dir)
    assert not report["ok"]
    hits = [v for v in report["violations"] if f"live stage {key}" in v]
    assert len(hits) == 1 and "does not match its signature" in hits[0], report["violations"]
    verified = invoke("certificates", run_dir, "--verify")
    assert verified.exit_code == 1 and key in verified.output
    # the same forgery in the same run without a key: the records are consistent, audit passes
    unsigned = tmp_path / "unsigned"
    shutil.copytree(run_dir, unsigned)
    unsign(unsigned)
    assert audit(unsigned)["ok"], "documented: without a key a consistent forgery passes audit"
    # a forged row without any signature: also refused
    sql(run_dir, "DELETE FROM stage_signatures WHERE key = ?", (key,))
    hits = [v for v in audit(run_dir)["violations"] if f"live stage {key}" in v]
    assert len(hits) == 1 and "is not signed" in hits[0]


def test_editing_one_byte_of_an_exported_certificate_fails_verify(run_dir, keys, tmp_path):
    certificates = [forget(run_dir, keys[0], sample_in(run_dir, m, s)) for m, s in
                    ((0, 0), (1, 1), (0, 1))]
    out = tmp_path / "export"
    assert invoke("certificates", run_dir, "--export", out).exit_code == 0
    ok = invoke("certificates", out, "--verify", "--public-key", f"{keys[0]}.pub")
    assert ok.exit_code == 0, ok.output
    assert "3 certificates" in ok.output and "export" in ok.output
    for certificate, (old, new) in zip(certificates, [("s0", "s9"), ('"duration_ms": ', '"duration_ms": 1'),
                                                        ('"live_shards": ', '"live_shards": 1')],
                                       strict=True):
        copy = tmp_path / f"copy-{certificate['sequence']}"
        shutil.copytree(out, copy)
        path = copy / f"{certificate['request_id']}.json"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
        edited = invoke("certificates", copy, "--verify", "--public-key", f"{keys[0]}.pub")
        assert edited.exit_code == 1, (old, edited.output)
        assert f"#{certificate['sequence']}" in edited.output
    # a key the auditor did not pin: the export names the run's key, a different one fails
    other = invoke("certificates", out, "--verify", "--public-key", f"{keys[1]}.pub")
    assert other.exit_code == 1 and "not the given key" in other.output


def test_attaching_a_key_to_an_unsigned_run_signs_its_records(run_dir, keys, tmp_path):
    unsign(run_dir)
    sql(run_dir, "DELETE FROM stage_signatures")
    invoke("forget", run_dir, "--ids", sample_in(run_dir, 0, 0))
    attached = invoke("keys", "attach", run_dir, "--signing-key", keys[1], "--json")
    assert attached.exit_code == 0, attached.output
    result = json.loads(attached.stdout)
    assert result["certificates_signed"] == 1 and result["stages_signed"] > 0
    assert audit(run_dir)["ok"]
    assert invoke("certificates", run_dir, "--verify", "--public-key",
                  f"{keys[1]}.pub").exit_code == 0
    again = invoke("keys", "attach", run_dir, "--signing-key", keys[0])
    assert again.exit_code == 2 and "never replaced" in again.stderr
    forge_served_stage(run_dir)
    assert not audit(run_dir)["ok"]


def test_the_service_serves_the_public_key_openly(run_dir, keys):
    from s3t.service import create_app

    os.environ[ENV] = str(keys[0])
    try:
        with TestClient(create_app(run_dir, token="t")) as client:
            body = client.get("/v1/keys").json()
            deleted = client.post("/v1/deletions", json={"sample_ids": [sample_in(run_dir, 0, 0)]},
                                  headers={"Authorization": "Bearer t"})
    finally:
        del os.environ[ENV]
    assert body == {"algorithm": "ed25519", "signing_key": load_signer(keys[0]).public,
                    "key_id": key_id(load_signer(keys[0]).public), "signed": True}
    assert deleted.status_code == 200, deleted.text
    assert "record" in deleted.json()["signature"]
    assert audit(run_dir)["ok"]
