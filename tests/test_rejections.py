"""Refusals are counted always and logged without flooding: the first with a hint, then one
line per window saying how many were held back."""
from __future__ import annotations

import logging
from collections import Counter

from twinnode.errors import InvalidSignature, MalformedMessage, SchemaMismatch
from twinnode.node.rejections import NEW_PER_WINDOW, RejectionLog
from twinnode.trust.identity import Identity

log = logging.getLogger("twinnode.test.rejections")


def refusal(cls: type, sender: str, seq: int):
    exc = cls(f"{sender} seq {seq} refused")
    exc.sender, exc.seq = sender, seq
    return exc


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_signature_refused_every_heartbeat_logs_once_with_the_fix_then_once_a_minute(caplog):
    counts: Counter[str] = Counter()
    clock = Clock()
    refusals = RejectionLog(log, counts, clock=clock)
    with caplog.at_level(logging.INFO, logger=log.name):
        for seq in range(1, 61):  # a minute of heartbeats from bob, whose keys changed
            refusals.refused(refusal(InvalidSignature, "bob", seq), "sub")
            clock.now += 1.0
        refusals.refused(refusal(InvalidSignature, "bob", 61), "sub")  # 60 s after the first
        refusals.refused(refusal(InvalidSignature, "bob", 62), "sub")
    records = caplog.records
    assert counts["signature"] == 62  # every one counted
    assert len(records) == 2
    first, summary = records
    assert first.getMessage().startswith("REJECTED (signature) peer=bob seq=1")
    assert "compare fingerprints" in first.fields["hint"]
    assert "twinnode check --config node.toml" in first.fields["hint"]
    assert summary.fields["repeated"] == 59 and "hint" not in summary.fields
    assert summary.getMessage().startswith("REJECTED (signature) peer=bob seq=61")


def test_each_reason_and_peer_gets_its_own_first_line(caplog):
    refusals = RejectionLog(log, Counter(), clock=Clock())
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(3):
            refusals.refused(refusal(InvalidSignature, "bob", 1), "sub")
            refusals.refused(refusal(InvalidSignature, "carol", 1), "sub")
            refusals.refused(refusal(SchemaMismatch, "bob", 2), "dealer")
    lines = [r.getMessage().split(":")[0] for r in caplog.records]
    assert lines == ["REJECTED (signature) peer=bob seq=1", "REJECTED (signature) peer=carol seq=1",
                     "REJECTED (schema) peer=bob seq=2"]
    assert "same schema.toml" in caplog.records[2].fields["hint"]


def test_zap_denials_of_one_key_are_summed_and_name_the_fingerprint(caplog):
    counts: Counter[str] = Counter()
    clock = Clock()
    refusals = RejectionLog(log, counts, clock=clock)
    key = Identity.generate("x").curve_public
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(10):
            refusals.denied(key)
        clock.now += 61
        refusals.denied(key)
    assert counts["zap-denied"] == 11
    assert [r.fields.get("repeated") for r in caplog.records] == [None, 9]
    assert "curve_key" in caplog.records[0].fields["hint"]


def test_a_flood_under_made_up_names_and_fresh_keys_writes_a_bounded_number_of_lines(caplog):
    counts: Counter[str] = Counter()
    clock = Clock()
    refusals = RejectionLog(log, counts, clock=clock, known={"bob", "carol"}.__contains__)
    keys = [Identity.generate("x").curve_public for _ in range(NEW_PER_WINDOW + 5)]
    with caplog.at_level(logging.INFO, logger=log.name):
        for minute in range(3):
            for i in range(5000):  # garbage claiming a new sender name every time
                refusals.refused(refusal(MalformedMessage, f"x{minute}-{i}", i), "router")
                refusals.refused(refusal(InvalidSignature, "bob", i), "sub")
            for key in keys:  # fresh CURVE keys, each denied
                refusals.denied(key)
            clock.now += 61
    assert counts["malformed"] == 15_000 and counts["zap-denied"] == 3 * len(keys)
    # per minute: one line for every made-up name together, one for bob, and for the keys
    # at most NEW_PER_WINDOW of their own plus one shared line ("*", peers=many)
    assert len(caplog.records) <= 3 * (1 + 1 + NEW_PER_WINDOW + 1)
    shared = [r for r in caplog.records if r.fields.get("peers") == "many"]
    assert shared and all(r.getMessage() == "DENIED (unpinned CURVE key)" for r in shared)
    assert max(len(r.getMessage()) for r in caplog.records) <= 300
