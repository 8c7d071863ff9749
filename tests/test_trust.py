"""Signed desired state and operator roles, without servers: what the hub signs, what an
edge takes (`fleetbus.core.trust`, `fleetbus.runtime.signing`), who may do what
(`fleetbus.core.roles`)."""

import base64
import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetbus.core import assignment, roles, trust
from fleetbus.core.assignment import Current, Held
from fleetbus.core.selector import matches
from fleetbus.core.trust import Record, Refusal
from fleetbus.errors import ConfigError
from fleetbus.runtime import apitoken, identity, signing
from fleetbus.runtime.signing import Signer, Verifier
from schemas.codec import JSON, decode_body, encode_body
from schemas.desk import Role
from schemas.headers import REVISION, SIGNATURE, SIGNER
from schemas.profile import LabelSelector, Profile, ProfileSpec

BODY = b'{"name":"base","revision":3,"spec":{}}'


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return Signer(identity.ensure(tmp_path_factory.mktemp("hub"), "desired-state"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    return Signer(identity.ensure(tmp_path_factory.mktemp("stranger"), "desired-state"))


def record(
    signer: Signer | None, *, revision=3, body=BODY, key="base", bucket="profiles", op=trust.PUT, **tamper
):
    headers = signer.headers(bucket, key, revision, op, body) if signer else {}
    return Record(
        tamper.get("as_bucket", bucket), tamper.get("as_key", key), tamper.get("as_op", op),
        tamper.get("as_body", body), headers | tamper.get("headers", {}),
    )  # fmt: skip


def judge(rec: Record, hub: Signer, seen: trust.Seen | None = None) -> Refusal | None:
    return trust.judge(rec, trusted={hub.key_id}, seen=seen, verify=signing.verify)


def test_a_record_the_hub_signed_is_taken(hub):
    assert judge(record(hub), hub) is None
    assert judge(record(hub, op=trust.DELETE, body=b""), hub) is None


def test_every_change_to_a_signed_record_breaks_its_signature(hub):
    assert judge(record(hub, as_body=BODY.replace(b"3", b"4")), hub) is Refusal.BAD_SIGNATURE
    assert judge(record(hub, as_key="other"), hub) is Refusal.BAD_SIGNATURE
    assert judge(record(hub, as_bucket="overrides"), hub) is Refusal.BAD_SIGNATURE
    assert judge(record(hub, as_op=trust.DELETE), hub) is Refusal.BAD_SIGNATURE
    assert judge(record(hub, headers={REVISION: "9"}), hub) is Refusal.BAD_SIGNATURE
    assert (
        judge(record(hub, headers={SIGNATURE: base64.b64encode(b"x" * 64).decode()}), hub)
        is Refusal.BAD_SIGNATURE
    )


def test_unsigned_malformed_and_unknown_signers_are_refused(hub, stranger):
    assert judge(record(None), hub) is Refusal.UNSIGNED
    assert judge(record(None, headers={REVISION: "3"}), hub) is Refusal.MALFORMED
    assert judge(record(hub, headers={REVISION: "three"}), hub) is Refusal.MALFORMED
    assert judge(record(hub, headers={SIGNATURE: ""}), hub) is Refusal.MALFORMED
    assert judge(record(stranger), hub) is Refusal.UNKNOWN_KEY
    # A stranger naming the hub's key as its signer does not make its signature the hub's.
    assert judge(record(stranger, headers={SIGNER: hub.key_id}), hub) is Refusal.BAD_SIGNATURE


def test_an_older_revision_is_a_replay_the_same_record_again_is_not(hub):
    taken = record(hub, revision=5)
    seen = trust.Seen(5, taken.digest)
    assert judge(taken, hub, seen) is None  # read again after a restart
    assert judge(record(hub, revision=4), hub, seen) is Refusal.REPLAYED
    # The same revision with other content: only a replay (of a delete, say) can be that.
    assert judge(record(hub, revision=5, op=trust.DELETE, body=b""), hub, seen) is Refusal.REPLAYED
    assert judge(record(hub, revision=6), hub, seen) is None


def test_two_keys_are_valid_during_a_rotation(hub, stranger):
    both = {hub.key_id, stranger.key_id}
    for signer in (hub, stranger):
        assert trust.judge(record(signer), trusted=both, seen=None, verify=signing.verify) is None


def test_the_verifier_keeps_the_highest_revision_across_restarts_and_counts_a_refusal_once(hub, tmp_path):
    heard = []
    state = tmp_path / "revisions.json"
    first = Verifier([hub.key_id], state=state, on_refused=lambda rec, why: heard.append(why))
    assert first.accept(record(hub, revision=7))
    assert not first.accept(record(hub, revision=6))
    assert not first.accept(record(hub, revision=6))  # told once
    assert heard == [Refusal.REPLAYED]
    first.flush()  # what a reader does after each burst
    again = Verifier([hub.key_id], state=state)
    assert not again.accept(record(hub, revision=6))
    assert again.accept(record(hub, revision=7))
    # Looking for the last good value (quiet) raises nothing and tells nobody.
    assert again.accept(record(hub, revision=8), quiet=True)
    assert again.seen["profiles/base"].revision == 7


def stub_of(hub: Signer, profile: Profile, *, key: str = "base") -> Record:
    """The stub a regional hands an edge, cut from the record the hub stored."""
    body = encode_body(profile, JSON)
    stored = hub.headers("profiles", key, profile.revision or 0, trust.PUT, body)
    stored |= hub.stub_headers("profiles", key, profile.revision or 0, encode_body(profile.stub(), JSON))
    handed = signing.stub_record(stored)
    assert handed is not None
    return Record("profiles", key, trust.operation_of(handed[1]), *handed)


POS = Profile(
    name="base",
    revision=3,
    selector=LabelSelector(match_labels={"role": "pos"}),
    spec=ProfileSpec(config={"till": "v2"}),
    description="the tills",
)


def test_a_stub_is_taken_only_by_an_edge_its_profile_does_not_select(hub, stranger):
    stub = stub_of(hub, POS)
    assert stub.operation == trust.STUB_OPERATION
    assert decode_body(Profile, stub.body, subject="base").spec == ProfileSpec()
    kiosk = {"role": "kiosk"}

    def selects(labels):
        return lambda rec: matches(decode_body(Profile, rec.body, subject=rec.key).selector, labels)

    def judged(rec, labels, seen=None):
        return trust.judge(
            rec, trusted={hub.key_id}, seen=seen, verify=signing.verify, selects=selects(labels)
        )

    assert judged(stub, kiosk) is None
    assert judged(stub, {"role": "pos"}) is Refusal.WITHHELD  # the regional withholds `base`
    assert trust.judge(stub, trusted={hub.key_id}, seen=None, verify=signing.verify) is Refusal.WITHHELD
    # The stub's signature holds only for the stub: not for the revision's content, another
    # selector, revision or key, and a regional cannot sign one itself.
    full = record(hub, revision=3, body=encode_body(POS, JSON))
    assert judged(Record("profiles", "base", trust.STUB_OPERATION, full.body, stub.headers), kiosk) is (
        Refusal.BAD_SIGNATURE
    )
    moved = POS.model_copy(update={"selector": LabelSelector(match_labels={"role": "x"})})
    tampered = Record("profiles", "base", trust.STUB_OPERATION, encode_body(moved.stub(), JSON), stub.headers)
    assert judged(tampered, kiosk) is Refusal.BAD_SIGNATURE
    assert (
        judged(Record("profiles", "base", trust.PUT, stub.body, stub.headers), kiosk) is Refusal.BAD_SIGNATURE
    )
    assert judged(stub_of(stranger, POS), kiosk) is Refusal.UNKNOWN_KEY
    # Beside the revision it stands for, either order; an older stub is a replay.
    assert judged(stub, kiosk, trust.Seen(3, full.digest, trust.PUT)) is None
    assert judged(full, kiosk, trust.Seen(3, stub.digest, trust.STUB_OPERATION)) is None
    assert judged(stub, kiosk, trust.Seen(4, "d", trust.PUT)) is Refusal.REPLAYED


def test_the_last_record_taken_of_a_revision_stands_and_a_relabel_raises_no_alarm(hub, tmp_path):
    heard = []
    labels = {"role": "kiosk"}
    verifier = Verifier(
        [hub.key_id], state=tmp_path / "revisions.json", on_refused=lambda r, why: heard.append(why)
    )
    verifier.selects = lambda rec: matches(decode_body(Profile, rec.body, subject=rec.key).selector, labels)
    full, stub = record(hub, revision=3, body=encode_body(POS, JSON)), stub_of(hub, POS)
    assert verifier.accept(full)
    assert verifier.accept(stub)  # it stopped selecting this edge
    assert verifier.last_taken("profiles", "base").operation == trust.STUB_OPERATION
    # Its labels change so that the revision selects it: the stub it took, read again, is
    # not a regional withholding anything; the revision itself comes next and stands.
    labels["role"] = "pos"
    assert verifier.accept(stub)
    assert heard == []
    assert verifier.accept(full)
    assert verifier.last_taken("profiles", "base").operation == trust.PUT
    # A stub it did not take, of a revision that selects it, is withheld.
    newer = POS.model_copy(update={"revision": 4})
    assert not verifier.accept(stub_of(hub, newer))
    assert heard == [Refusal.WITHHELD]


def test_what_a_regional_hands_an_edge():
    pos = LabelSelector(match_labels={"role": "pos"})
    edge = {"role": "pos"}
    put, stub, delete = trust.PUT, trust.STUB_OPERATION, trust.DELETE
    decide = assignment.for_profile
    # Selected: the revision, once.
    assert decide(Current(3, put, pos), edge, None) == Held(3, put)
    assert decide(Current(3, put, pos), edge, Held(3, put)) is None
    assert decide(Current(4, put, pos), edge, Held(3, put)) == Held(4, put)
    # Not selected: nothing to an edge that never held it; a stub to one that did.
    assert decide(Current(3, put, pos), {"role": "kiosk"}, None) is None
    assert decide(Current(4, put, pos), {"role": "kiosk"}, Held(3, put)) == Held(4, stub)
    assert decide(Current(4, put, pos), {"role": "kiosk"}, Held(4, put)) == Held(
        4, stub
    )  # its labels changed
    # A stub is kept current: an older revision's selector must not decide after a relabel.
    assert decide(Current(5, put, pos), {"role": "kiosk"}, Held(4, stub)) == Held(5, stub)
    assert decide(Current(5, put, pos), {"role": "kiosk"}, Held(5, stub)) is None
    assert decide(Current(4, put, pos), edge, Held(4, stub)) == Held(4, put)  # selected again
    # Deleted: the signed delete to those holding a record of it, nothing to the others.
    assert decide(Current(5, delete), edge, Held(4, put)) == Held(5, delete)
    assert decide(Current(5, delete), edge, Held(4, stub)) == Held(5, delete)
    assert decide(Current(5, delete), edge, Held(5, delete)) is None
    assert decide(Current(5, delete), edge, None) is None
    assert decide(Current(6, put, pos), edge, Held(5, delete)) == Held(6, put)
    # Group overrides: the current record to members; a former member keeps what it has.
    group = assignment.for_group
    assert group(Current(2, put), None, member=True) == Held(2, put)
    assert group(Current(2, put), Held(2, put), member=True) is None
    assert group(Current(3, delete), Held(2, put), member=True) == Held(3, delete)
    assert group(Current(3, delete), None, member=True) is None
    assert group(Current(4, put), Held(2, put), member=False) is None


def test_an_edge_without_a_trusted_key_does_not_start():
    with pytest.raises(ConfigError, match="trusted_keys"):
        Verifier([])
    with pytest.raises(ConfigError, match="not a public user nkey"):
        signing.check_keys(["SUAAAA"], field="trusted_keys")


@given(
    body=st.binary(max_size=64),
    headers=st.dictionaries(st.sampled_from([SIGNER, SIGNATURE, REVISION, "x"]), st.text(max_size=80)),
)
def test_no_record_makes_judging_raise(body, headers):
    rec = Record("profiles", "k", trust.PUT, body, headers)
    assert trust.judge(rec, trusted={"UX"}, seen=trust.Seen(1, "d"), verify=signing.verify) is not None


def test_roles():
    f = roles.forbidden
    assert f(Role.ADMIN, [], "operator.add") is None
    assert f(Role.OPERATOR, [], "profile.apply") is None
    assert "role operator may not operator.add" in f(Role.OPERATOR, [], "operator.add")
    assert "role viewer may not profile.apply" in f(Role.VIEWER, [], "profile.apply")
    assert f(Role.VIEWER, [], "whoami") is None
    scoped = ["r1"]
    assert "profiles reach every region" in f(Role.OPERATOR, scoped, "profile.apply")
    assert f(Role.OPERATOR, scoped, "override.set", scope="edge", target_region="r1") is None
    assert "in region r2" in f(Role.OPERATOR, scoped, "override.set", scope="edge", target_region="r2")
    assert "one region" in f(Role.OPERATOR, scoped, "override.remove", scope="edge", target_region=None)
    assert "not of groups" in f(Role.OPERATOR, scoped, "override.set", scope="group")
    assert "no operation" in f(Role.ADMIN, [], "drop.tables")


def test_dashboard_tokens_are_the_hubs_and_expire(hub, stranger):
    now = datetime.now(UTC)
    token, claims = apitoken.mint(hub, role=Role.VIEWER, expires=now + timedelta(hours=1), issued_by="admin")
    assert apitoken.check(token, {hub.key_id}, now) == claims
    with pytest.raises(apitoken.TokenError, match="expired"):
        apitoken.check(token, {hub.key_id}, now + timedelta(hours=2))
    forged, _ = apitoken.mint(stranger, role=Role.ADMIN, expires=now + timedelta(hours=1), issued_by="x")
    with pytest.raises(apitoken.TokenError, match="not signed by this hub"):
        apitoken.check(forged, {hub.key_id}, now)
    # The hub's signature on other claims (a viewer's token made an admin's) fails too.
    prefix, body, signature = token.split(".")
    admin = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(body + "==").replace(b"viewer", b"admin")
    ).decode()
    with pytest.raises(apitoken.TokenError, match="not signed by this hub"):
        apitoken.check(f"{prefix}.{admin.rstrip('=')}.{signature}", {hub.key_id}, now)


@given(st.text(max_size=200))
def test_no_string_makes_token_checking_raise_anything_but_token_error(text):
    with contextlib.suppress(apitoken.TokenError):
        apitoken.check(text, {"UX"}, datetime.now(UTC))
        pytest.fail("a string that is no token was taken")


def test_a_copy_in_assigned_verifies_as_the_hubs_record_it_copies_and_is_kept_per_edge(hub, stranger):
    """What a hollow edge reads: `assigned` copies, judged as the `profiles` records the hub
    signed (`assignment.origin`), each edge's key kept apart (so two edges of a rollout at
    different revisions are not each other's replay)."""
    verifier = Verifier([hub.key_id])
    verifier.signed_as = assignment.origin
    copy = lambda signer, edge, revision: record(  # noqa: E731
        signer, revision=revision, as_bucket="assigned", as_key=f"{edge}.profile.base"
    )
    assert verifier.accept(copy(hub, "e1", 7))
    assert verifier.accept(copy(hub, "e2", 6))  # e2 waits for its wave: not a replay of e1's 7
    assert not verifier.accept(copy(hub, "e1", 6))  # e1 going back is
    assert not verifier.accept(copy(stranger, "e3", 8))
    # Signed for another key than the one it is copied under: refused.
    moved = record(hub, key="other", as_bucket="assigned", as_key="e1.profile.base")
    assert not verifier.accept(moved)
    assert assignment.origin(Record("assigned", "e1.group.tills", "PUT", b"", {})).key == "group.tills"
    assert assignment.origin(Record("assigned", "e1.group.tills", "PUT", b"", {})).bucket == "overrides"
