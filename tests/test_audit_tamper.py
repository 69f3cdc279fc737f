"""An audit with no blind spots: every tampering planted here by hand in a copy of a run makes
`s3t audit` fail with its own message. The deletion log is a hash chain (a removed, edited
or reordered certificate is reported), and group keys are stored only as a keyed hash.

Nothing here loads a model after the module's one training run: audit, forget and the
certificate listing are ledger and file work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from test_cli_engine import invoke, write_csv
from test_faults import s3t
from tiny import copy_run, toy_dataset

from s3t.run import Run
from s3t.run.chain import DeletionLogError, certificate_sha256
from s3t.run.faults import FAULT_EXIT
from s3t.run.files import sha256_file
from s3t.run.ledger import GROUP_SECRET, Ledger

DATA = toy_dataset(40, groups=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("tamper")
    run = root / "run"
    result = invoke("train", "--data", write_csv(root / "train.csv", DATA), "--out", run,
                    "--model", tiny_bert, "--shards", 2, "--slices", 2, "--budget", 2,
                    "--epochs", 1, "--batch-size", 8, "--lora-r", 2, "--lora-alpha", 4, "--json")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def run_dir(trained, tmp_path) -> Path:
    return copy_run(trained, tmp_path)


def violations(run_dir: Path) -> list[str]:
    run = Run.open(run_dir, repair=False)  # as `s3t audit` opens it
    try:
        return run.audit().violations
    finally:
        run.close()


def only(found: list[str], *needles: str) -> str:
    """The one violation that contains every needle."""
    hits = [v for v in found if all(n in v for n in needles)]
    assert len(hits) == 1, (needles, found)
    return hits[0]


def sql(run_dir: Path, query: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        with conn:
            return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def forget(run_dir: Path, ids: list[str] | None = None, groups: list[str] | None = None) -> dict:
    run = Run.open(run_dir)
    try:
        return run.forget(sample_ids=ids, groups=groups)[1]
    finally:
        run.close()


def sample_in(run_dir: Path, shard: int, slice_: int, n: int = 0) -> str:
    return sql(run_dir, "SELECT sample_id FROM samples WHERE shard = ? AND slice = ? AND "
               "deleted_version IS NULL ORDER BY sample_id", (shard, slice_))[n][0]


def erased_stage(run_dir: Path) -> tuple[str, Path]:
    """Stash every stage, delete a sample so that stages go, return one erased stage's key and
    its stashed directory (what someone would copy back)."""
    stash = run_dir.parent / "stash"
    shutil.copytree(run_dir / "stages", stash)
    certificate = forget(run_dir, [sample_in(run_dir, 0, 0)])
    key = sorted(certificate["erased_stages"], key=len)[0]  # a depth-1 stage
    return key, stash / "0" / key


# --- 1. files where no live stage or block puts them -----------------------------------------

def plant_nested(run_dir: Path, key: str, stashed: Path) -> Path:
    live = next(p for p in sorted((run_dir / "stages" / "1").iterdir()))
    shutil.copytree(stashed, live / key)
    return live / key


def plant_old(run_dir: Path, key: str, stashed: Path) -> Path:
    shutil.copytree(stashed, run_dir / "stages" / "old" / key)
    return run_dir / "stages" / "old"


def plant_zero_padded(run_dir: Path, key: str, stashed: Path) -> Path:
    shutil.copytree(stashed, run_dir / "stages" / "00" / key)
    return run_dir / "stages" / "00"


def plant_non_numeric_shard(run_dir: Path, key: str, stashed: Path) -> Path:
    shutil.copytree(stashed, run_dir / "stages" / "zero" / key)
    return run_dir / "stages" / "zero"


@pytest.mark.parametrize("plant", [plant_nested, plant_old, plant_zero_padded,
                                   plant_non_numeric_shard])
def test_an_erased_stage_hidden_anywhere_under_stages_is_reported_and_kept(run_dir, plant):
    key, stashed = erased_stage(run_dir)
    assert violations(run_dir) == []
    where = plant(run_dir, key, stashed)
    message = only(violations(run_dir), str(where), "not part of any live stage")
    assert f"{key} (erased)" in message and "remove it yourself" in message
    Run.open(run_dir).close()  # opening repairs what the ledger names, never this
    assert where.exists()
    result = invoke("audit", run_dir)
    assert result.exit_code == 1 and str(where) in result.output


def test_stray_files_in_stages_and_in_a_live_stage_directory_are_reported(run_dir):
    top = run_dir / "stages" / "notes.txt"
    top.write_text("x")
    live = Run.open(run_dir)
    record = live.ledger.stages("live")[0]
    inside = live.store.path(record.shard, record.key) / "extra.bin"
    live.close()
    inside.write_bytes(b"weights from somewhere")
    found = violations(run_dir)
    only(found, str(top), "not part of any live stage")
    message = only(found, str(inside), f"live stage {record.key}")
    assert "adapter.safetensors, head.safetensors, meta.json" in message


def test_stray_entries_in_the_feature_cache_are_reported(run_dir):
    cache = run_dir / "feature-cache"
    cache.mkdir(exist_ok=True)
    (cache / "dump.npy").write_bytes(b"features")
    found = violations(run_dir)
    only(found, str(cache / "dump.npy"), "feature cache")


# --- 2. a live stage the ledger records no files for ---------------------------------------

def test_a_live_stage_recorded_without_files_fails_audit_and_retrain_takes_it_out(run_dir):
    run = Run.open(run_dir)
    routed = sorted(k for k in run.ledger.routes().values() if k is not None)[0]
    shard = int(routed.split("-")[0])
    shutil.rmtree(run.store.path(shard, routed))
    run.ledger.conn.execute("UPDATE stages SET files = '{}' WHERE key = ?", (routed,))
    run.close()
    message = only(violations(run_dir), f"stage {routed}", "records the files none")
    assert "s3t retrain" in message
    run = Run.open(run_dir)
    assert routed in run.quarantine_damaged()  # what `s3t retrain` does first
    assert run.audit().ok, run.audit().violations
    run.close()


# --- 3. a consistent forgery of an erased stage --------------------------------------------

def test_an_erased_stage_forged_back_to_live_is_caught_three_ways(run_dir):
    key, stashed = erased_stage(run_dir)
    shard = int(key.split("-")[0])
    versions = dict(((sh, sl), v) for sh, sl, v in sql(run_dir, "SELECT * FROM slices"))
    prefix = json.loads(sql(run_dir, "SELECT prefix FROM stages WHERE key = ?", (key,))[0][0])
    current = [versions[(shard, s)] for s in prefix]  # no longer "trained on a deleted sample"
    hashes = {p.name: sha256_file(p) for p in stashed.iterdir()}
    shutil.copytree(stashed, run_dir / "stages" / str(shard) / key)
    sql(run_dir, "UPDATE stages SET status = 'live', erased_by = NULL, files = ?, versions = ?, "
        "val_score = 1.0 WHERE key = ?", (json.dumps(hashes), json.dumps(current), key))
    sql(run_dir, "UPDATE routes SET stage = ? WHERE shard = ?", (key, shard))
    found = violations(run_dir)
    assert not any("trained on a deleted sample" in v for v in found), "versions were rewritten"
    only(found, f"live stage {key}:", "which is stage", "row was edited")
    only(found, f"live stage {key}:", "meta.json disagrees", "versions")
    only(found, f"live stage {key} was erased by deletion request", "certificate lists it")
    only(found, f"shard {shard} serves stage {key}", "fails the checks above")
    run = Run.open(run_dir)
    assert run.quarantine_damaged() == [key]  # `s3t retrain` takes it out before training
    assert run.audit().ok, run.audit().violations
    assert run.ledger.routes()[shard] != key
    run.close()


def test_a_live_stage_marked_erased_by_a_request_is_reported(run_dir):
    key, stashed = erased_stage(run_dir)
    shard = int(key.split("-")[0])
    hashes = {p.name: sha256_file(p) for p in stashed.iterdir()}
    shutil.copytree(stashed, run_dir / "stages" / str(shard) / key)
    sql(run_dir, "UPDATE stages SET status = 'live', files = ? WHERE key = ?",
        (json.dumps(hashes), key))
    found = violations(run_dir)
    only(found, f"live stage {key}", "trained on a deleted sample")
    only(found, f"live stage {key} was erased by deletion request")


# --- 4. the deletion log: a hash chain ---------------------------------------------------------

def three_deletions(run_dir: Path) -> list[dict]:
    return [forget(run_dir, [sample_in(run_dir, 0, 0)]), forget(run_dir, groups=["user9"]),
            forget(run_dir, [sample_in(run_dir, 1, 1)])]


def test_certificates_form_a_chain_whose_head_the_ledger_keeps(run_dir):
    first, second, third = three_deletions(run_dir)
    assert [c["sequence"] for c in (first, second, third)] == [1, 2, 3]
    assert first["previous_sha256"] is None
    assert second["previous_sha256"] == certificate_sha256(first)
    assert third["previous_sha256"] == certificate_sha256(second)
    head = json.loads(sql(run_dir, "SELECT value FROM meta WHERE key = 'certificate_chain'")[0][0])
    assert head == {"sequence": 3, "sha256": certificate_sha256(third)}
    assert violations(run_dir) == []
    again = forget(run_dir, [first["samples"][0]])
    assert again == first, "re-issuing returns the original certificate"
    assert json.loads(sql(run_dir, "SELECT value FROM meta WHERE key = 'certificate_chain'")[0][0]) \
        == head, "and does not extend the chain"


def remove_middle(run_dir: Path, certs: list[dict]) -> None:
    sql(run_dir, "DELETE FROM deletions WHERE request_id = ?", (certs[1]["request_id"],))


def remove_last(run_dir: Path, certs: list[dict]) -> None:
    sql(run_dir, "DELETE FROM deletions WHERE request_id = ?", (certs[2]["request_id"],))


def edit_first(run_dir: Path, certs: list[dict]) -> None:
    edited = {**certs[0], "erased_stages": []}
    sql(run_dir, "UPDATE deletions SET certificate = ? WHERE request_id = ?",
        (json.dumps(edited), edited["request_id"]))


def edit_last(run_dir: Path, certs: list[dict]) -> None:
    edited = {**certs[2], "routes_after": {}}
    sql(run_dir, "UPDATE deletions SET certificate = ? WHERE request_id = ?",
        (json.dumps(edited), edited["request_id"]))


def reorder(run_dir: Path, certs: list[dict]) -> None:
    """Swap the first two, relinking their positions as someone rewriting history would."""
    a = {**certs[1], "sequence": 1, "previous_sha256": None}
    b = {**certs[0], "sequence": 2, "previous_sha256": certificate_sha256(a)}
    for cert in (a, b):
        sql(run_dir, "UPDATE deletions SET certificate = ? WHERE request_id = ?",
            (json.dumps(cert), cert["request_id"]))


def drop_head(run_dir: Path, certs: list[dict]) -> None:
    sql(run_dir, "DELETE FROM meta WHERE key = 'certificate_chain'")


@pytest.mark.parametrize("tamper, needles", [
    (remove_middle, ("certificate #2 of 3 is missing", "removed")),
    (remove_last, ("certificate #3 of 3 is missing", "removed")),
    (edit_first, ("certificate #2", "names previous sha256", "edited, or the certificates were "
                  "reordered")),
    (edit_last, ("chain head (#3", "does not match certificate #3", "edited")),
    (reorder, ("certificate #3", "names previous sha256")),
    (drop_head, ("no chain head",)),
])
def test_a_removed_edited_or_reordered_certificate_breaks_the_chain(run_dir, tamper, needles):
    certs = three_deletions(run_dir)
    tamper(run_dir, certs)
    message = only(violations(run_dir), *needles)
    assert "restore ledger.sqlite from a backup" in message
    listing = invoke("certificates", run_dir, "--json")
    assert listing.exit_code == 1 and json.loads(listing.stdout)["intact"] is False


def test_a_removed_certificate_is_also_missed_by_its_samples(run_dir):
    certs = three_deletions(run_dir)
    remove_middle(run_dir, certs)
    only(violations(run_dir), f"deleted by request {certs[1]['request_id']}",
         "has no certificate")


def test_no_deletion_is_linked_onto_a_chain_without_a_head(run_dir):
    three_deletions(run_dir)
    drop_head(run_dir, [])
    with pytest.raises(DeletionLogError, match="no certificate chain head"):
        forget(run_dir, [sample_in(run_dir, 1, 0)])
    result = s3t("forget", run_dir, "--ids", sample_in(run_dir, 1, 0))
    assert result.returncode == 1 and result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr


def test_certificate_files_edited_missing_or_unknown_are_reported(run_dir):
    first, second, _ = three_deletions(run_dir)
    folder = run_dir / "certificates"
    edited = folder / f"{first['request_id']}.json"
    edited.write_text(json.dumps({**first, "samples": []}))
    (folder / f"{second['request_id']}.json").unlink()
    (folder / "forged.json").write_text("{}")
    found = violations(run_dir)
    only(found, str(edited), "differs from the ledger", "samples")
    only(found, f"{second['request_id']}.json is missing", "restores it")
    only(found, str(folder / "forged.json"), "not the certificate of any deletion")
    edited.unlink()
    (folder / "forged.json").unlink()
    Run.open(run_dir).close()  # restores both from the ledger
    assert violations(run_dir) == []
    assert json.loads(edited.read_text()) == first


def test_an_outcome_field_of_the_wrong_type_in_row_and_file_is_reported(run_dir):
    """Outcome fields are outside the chain digest, so on an unsigned run only the record's
    types catch `files_erased: "yes"` written consistently into the ledger and the file;
    the run still opens (its own steps never read a record they cannot type)."""
    first, _, _ = three_deletions(run_dir)
    edited = {**first, "files_erased": "yes"}
    sql(run_dir, "UPDATE deletions SET certificate = ? WHERE request_id = ?",
        (json.dumps(edited), first["request_id"]))
    (run_dir / "certificates" / f"{first['request_id']}.json").write_text(json.dumps(edited))
    only(violations(run_dir), first["request_id"], "not a certificate record", "`files_erased`")


def test_a_crash_after_the_commit_keeps_the_chain_and_a_reissue_does_not_extend_it(run_dir):
    victim = sample_in(run_dir, 0, 1)
    crashed = s3t("forget", run_dir, "--ids", victim, "--json", fault="forget:after-commit")
    assert crashed.returncode == FAULT_EXIT
    head = sql(run_dir, "SELECT value FROM meta WHERE key = 'certificate_chain'")[0][0]
    (stored,) = [json.loads(r[0]) for r in sql(run_dir, "SELECT certificate FROM deletions")]
    assert json.loads(head) == {"sequence": 1, "sha256": certificate_sha256(stored)}
    again = s3t("forget", run_dir, "--ids", victim, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["request_id"] == stored["request_id"]
    assert sql(run_dir, "SELECT value FROM meta WHERE key = 'certificate_chain'")[0][0] == head
    assert violations(run_dir) == []


# --- 5. s3t certificates ---------------------------------------------------------------------

def test_certificates_lists_the_chain_and_exports_it_without_the_secret(run_dir, tmp_path):
    certs = three_deletions(run_dir)
    listing = invoke("certificates", run_dir, "--json")
    assert listing.exit_code == 0, listing.output
    summary = json.loads(listing.stdout)
    assert summary["intact"] is True and summary["problems"] == []
    assert [c["request_id"] for c in summary["certificates"]] == [c["request_id"] for c in certs]
    assert summary["head"] == {"sequence": 3, "sha256": certificate_sha256(certs[-1])}
    text = invoke("certificates", run_dir)
    assert text.exit_code == 0 and "chain intact: 3 certificates" in text.output
    out = tmp_path / "export"
    exported = invoke("certificates", run_dir, "--export", out)
    assert exported.exit_code == 0, exported.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{c['request_id']}.json" for c in certs] + ["chain.json"])
    chain = json.loads((out / "chain.json").read_text())
    assert chain["head"] == summary["head"]
    for cert in certs:
        saved = json.loads((out / f"{cert['request_id']}.json").read_text())
        assert certificate_sha256(saved) == certificate_sha256(cert)
    secret = sql(run_dir, "SELECT value FROM secrets WHERE name = ?", (GROUP_SECRET,))[0][0]
    assert all(secret not in p.read_text() for p in out.iterdir())
    again = invoke("certificates", run_dir, "--export", out)
    assert again.exit_code == 2 and "not an empty directory" in again.stderr


# --- 6. group keys: a keyed hash, never reversible from what is handed out ------------------

def test_group_keys_are_stored_and_certified_only_as_a_keyed_hash(run_dir):
    plain = hashlib.sha256(b"user3").hexdigest()
    members = sorted(i for i, g in zip(DATA.ids, DATA.groups, strict=True) if g == "user3")
    stored = {r[0] for r in sql(run_dir, "SELECT grp FROM samples")}
    assert plain not in stored and len(stored) == len(set(DATA.groups))
    certificate = forget(run_dir, groups=["user3"])
    assert certificate["samples"] == members
    assert certificate["groups_hmac"] and plain not in json.dumps(certificate)
    (secret,) = sql(run_dir, "SELECT value FROM secrets WHERE name = ?", (GROUP_SECRET,))[0]
    assert len(bytes.fromhex(secret)) == 32
    status = invoke("status", run_dir, "--json")
    assert status.exit_code == 0 and secret not in status.stdout
    for path in (run_dir / "certificates").iterdir():
        assert secret not in path.read_text()


def test_each_run_has_its_own_secret(tmp_path):
    hashes = []
    for name in ("a", "b"):
        ledger = Ledger(tmp_path / f"{name}.sqlite")
        ledger.initialise(1)
        ledger.add_samples([("s1", 0, 0, "user3", 0, "red cat")], 1, 1)
        hashes.append(ledger.conn.execute("SELECT grp FROM samples").fetchone()[0])
        assert ledger.group_members(["user3"]) == {"user3": ["s1"]}
        ledger.close()
    assert hashes[0] != hashes[1], "the same group key hashes differently in another run"


# --- 7. runs from before the chain and the secret ---------------------------------------------

def make_legacy(run_dir: Path) -> None:
    """Turn a run into what the previous version wrote: no chain, no secret, plain sha256."""
    group_of = dict(zip(DATA.ids, DATA.groups, strict=True))
    sql(run_dir, "DELETE FROM secrets")
    sql(run_dir, "DELETE FROM meta WHERE key IN ('certificate_chain', 'group_hash')")
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    with conn:
        for sid, in conn.execute("SELECT sample_id FROM samples").fetchall():
            conn.execute("UPDATE samples SET grp = ? WHERE sample_id = ?",
                         (hashlib.sha256(group_of[sid].encode()).hexdigest(), sid))
        for request_id, text in conn.execute("SELECT request_id, certificate FROM deletions"):
            cert = json.loads(text)
            del cert["sequence"], cert["previous_sha256"]
            cert["groups_sha256"] = [hashlib.sha256(b"user9").hexdigest()] \
                if cert.pop("groups_hmac") else []
            conn.execute("UPDATE deletions SET certificate = ? WHERE request_id = ?",
                         (json.dumps(cert), request_id))
            (run_dir / "certificates" / f"{request_id}.json").write_text(json.dumps(cert))
    conn.close()


def untouched_group(run_dir: Path) -> tuple[str, list[str]]:
    """A group none of whose samples is deleted yet, and its samples."""
    deleted = {r[0] for r in sql(run_dir, "SELECT sample_id FROM samples "
                                          "WHERE deleted_version IS NOT NULL")}
    groups: dict[str, list[str]] = {}
    for sid, group in zip(DATA.ids, DATA.groups, strict=True):
        groups.setdefault(group, []).append(sid)
    group = next(g for g, ids in sorted(groups.items()) if not deleted & set(ids))
    return group, sorted(groups[group])


def test_a_run_from_before_the_chain_is_upgraded_on_open_in_one_step(run_dir):
    old = three_deletions(run_dir)
    make_legacy(run_dir)
    assert sql(run_dir, "SELECT value FROM secrets") == []
    assert violations(run_dir) == [], "opening it (even to audit) upgrades it"
    certs = sorted((json.loads(r[0]) for r in sql(run_dir, "SELECT certificate FROM deletions")),
                   key=lambda c: c["sequence"])
    assert [c["request_id"] for c in certs] == [c["request_id"] for c in old]
    assert certs[1]["groups_sha256"] == [hashlib.sha256(b"user9").hexdigest()], \
        "issued certificates keep their plain group hashes"
    files = [json.loads((run_dir / "certificates" / f"{c['request_id']}.json").read_text())
             for c in certs]
    assert files == certs, "the certificate files gained their links too"
    group, members = untouched_group(run_dir)
    fresh = forget(run_dir, groups=[group])  # old hashes were re-keyed: groups still match
    assert fresh["samples"] == members and fresh["sequence"] == 4
    assert hashlib.sha256(group.encode()).hexdigest() not in {
        r[0] for r in sql(run_dir, "SELECT grp FROM samples")}
    assert violations(run_dir) == []
    listing = json.loads(invoke("certificates", run_dir, "--json").stdout)
    assert listing["legacy_certificates"] == 3 and listing["intact"] is True


def test_a_half_upgraded_ledger_is_never_upgraded_again_but_reported(run_dir):
    three_deletions(run_dir)
    sql(run_dir, "DELETE FROM secrets")  # the secret alone is gone: not a legacy run
    found = violations(run_dir)
    only(found, "no group-key secret", "restore ledger.sqlite from a backup")
    assert sql(run_dir, "SELECT value FROM secrets") == []
    with pytest.raises(DeletionLogError, match="no group-key secret"):
        forget(run_dir, groups=["user5"])
