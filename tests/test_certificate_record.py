"""The certificate as one typed record (``s3t.run.certificate``): for the same content it
serialises to exactly the bytes main wrote before the record existed (ledger row, file,
chain digest, signatures), so existing runs' chains and signatures still verify; it refuses
a record that lacks a field or holds a wrong type; every change is a named step; and the
HTTP contract's ``Certificate`` agrees with it field by field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from s3t import contract
from s3t.run.certificate import (
    CellVersion,
    Certificate,
    CertificateRecordError,
    Restore,
    Signature,
)
from s3t.run.certificates import write_certificate
from s3t.run.chain import OUTCOME_FIELDS, ChainHead, certificate_sha256, chain_problems
from s3t.run.signing import certificate_problems, load_signer, new_key

FIXTURE = json.loads((Path(__file__).parent / "data" / "certificates-main.json").read_text())
ROWS = [c["ledger_row"] for c in FIXTURE["certificates"]]


@pytest.mark.parametrize("captured", FIXTURE["certificates"],
                         ids=lambda c: json.loads(c["ledger_row"]).get("kind", "deletion"))
def test_a_certificate_from_main_serialises_to_exactly_its_bytes(captured, tmp_path):
    record = Certificate.from_json(captured["ledger_row"])
    assert record.to_json() == captured["ledger_row"], "the ledger row, byte for byte"
    write_certificate(tmp_path, record, fault=False)
    assert (tmp_path / f"{record.request_id}.json").read_text() == captured["file"]
    assert record.sha256() == captured["sha256"], "the chain digest"
    assert certificate_problems(FIXTURE["signing_key"], record.to_dict()) == [], \
        "both signatures (record and outcome) still verify"
    assert Certificate.from_dict(record.to_dict()) == record, "round trip"


def test_the_chains_of_main_still_verify_through_the_record():
    records = [Certificate.from_json(row) for row in ROWS]
    original, restored = records[:3], records[:2] + records[3:]
    for chain in (original, restored):
        head = ChainHead(len(chain), chain[-1].sha256())
        assert [c.sequence for c in chain] == list(range(1, len(chain) + 1))
        assert chain_problems([c.to_dict() for c in chain], head) == []
    restore = records[-1].restore
    assert restore is not None and restore.kind == "restore"
    assert restore.replayed[0].sha256 == records[2].sha256(), "names what it replayed"


def test_a_record_older_versions_wrote_round_trips_with_its_unknown_keys():
    legacy = {"request_id": "r", "time": "2025-01-01T00:00:00+00:00", "samples": ["a"],
              "already_deleted": [], "groups": ["user9"], "groups_sha256": ["ab"],
              "cells": [{"shard": 0, "slice": 1, "new_version": 2}], "erased_stages": ["0-1v0"],
              "routes_before": {"0": "0-1v0"}, "routes_after": {"0": None}, "live_shards": 0,
              "duration_ms": 1.5, "files_erased": True}
    record = Certificate.from_dict(legacy)
    assert not record.linked and record.extra == {"groups": ["user9"]}
    assert record.to_dict() == legacy and record.sha256() == certificate_sha256(legacy)
    linked, head = record.link(ChainHead(0, None))
    assert linked.to_dict()["previous_sha256"] is None and head == ChainHead(1, linked.sha256())


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d.pop("erased_stages"), "erased_stages"),
    (lambda d: d.update(live_shards="2"), "live_shards"),
    (lambda d: d.update(files_erased=1), "files_erased"),
    (lambda d: d.update(erase_error=None), "erase_error"),  # None means absent: never null
    (lambda d: d.update(sequence=True), "sequence"),
    (lambda d: d.pop("previous_sha256"), "previous_sha256"),
    (lambda d: d.update(cells=[{"shard": 0, "slice": 0}]), "cells"),
    (lambda d: d["signature"].pop("record"), "signature.record"),
    (lambda d: d.update(routes_after={"0": 3}), "routes_after"),
])
def test_a_record_missing_a_field_or_of_a_wrong_type_is_refused(change, field):
    stored = json.loads(ROWS[0])
    change(stored)
    with pytest.raises(CertificateRecordError, match=f"`{field}`"):
        Certificate.from_dict(stored)


def test_every_change_is_a_named_step_and_the_chained_part_never_moves(tmp_path):
    committed = Certificate.from_json(ROWS[0])
    bare = dataclasses.replace(committed, **{f: None for f in OUTCOME_FIELDS},
                               signature=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bare.files_erased = True  # type: ignore[misc]
    new_key(tmp_path / "k")
    signer = load_signer(tmp_path / "k")
    sealed = signer.seal_record(bare)
    assert sealed.signature is not None and sealed.signature.outcome is None
    failed = sealed.erasure(ledger_scrubbed=True, feature_blocks_erased=None, files_erased=False,
                            erase_error="OSError: busy").timed(3.25)
    assert (failed.files_erased, failed.erase_error, failed.feature_blocks_erased) == \
        (False, "OSError: busy", None)
    assert "feature_blocks_erased" not in failed.to_dict(), "a step not reached stays absent"
    settled = signer.seal_outcome(failed.settled())
    assert settled.files_erased and settled.ledger_scrubbed
    assert {bare.sha256(), sealed.sha256(), failed.sha256(), settled.sha256()} == \
        {committed.sha256()}, "outcome and signature are outside the chain digest"
    public = signer.public
    assert certificate_problems(public, settled.to_dict()) == []
    assert certificate_problems(public, failed.to_dict()) != [], "unsigned outcome is caught"
    assert signer.seal_outcome(bare) is bare, "no record signature: nothing to add"
    assert bare.certificate_failed("OSError: x").certificate_error == "OSError: x"


def test_the_http_contract_mirrors_the_record_field_by_field():
    record_fields = {f.name for f in dataclasses.fields(Certificate)} - {"restore", "extra"}
    restore_fields = {f.name for f in dataclasses.fields(Restore)}
    assert set(contract.Certificate.model_fields) == record_fields | restore_fields
    assert set(contract.CertificateSignature.model_fields) == \
        {f.name for f in dataclasses.fields(Signature)}
    assert set(contract.CellVersion.model_fields) == \
        {f.name for f in dataclasses.fields(CellVersion)}
    for row in ROWS:  # and a real certificate reads the same through both
        stored = json.loads(row)
        answered = contract.Certificate.model_validate(stored)
        assert answered.model_dump(mode="json", exclude_unset=True) == \
            Certificate.from_dict(stored).to_dict()


def test_the_callers_request_ids_sit_after_live_shards_inside_the_chained_part():
    """As the ledger writes them since client_request_id/x_request_id exist."""
    stored = json.loads(ROWS[0])
    at = list(stored).index("live_shards") + 1
    items = list(stored.items())
    keyed = dict(items[:at] + [("client_request_id", "ticket-7"), ("x_request_id", "abc")]
                 + items[at:])
    record = Certificate.from_dict(keyed)
    assert record.to_json() == json.dumps(keyed)
    assert record.sha256() == certificate_sha256(keyed) != Certificate.from_json(ROWS[0]).sha256()
