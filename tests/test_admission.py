"""The admission rules (`fleetbus.core.admission`) and enrollment tokens, without servers."""

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetbus.cli.sites import parse_duration
from fleetbus.core import admission
from fleetbus.core.admission import Claims, Registry, Status
from fleetbus.errors import ConfigError
from fleetbus.runtime import enrolltoken, identity
from fleetbus.runtime.enrolltoken import TokenError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ADMIN = identity.generate_seed()
ISSUERS = frozenset({identity.public_key(ADMIN)})


def claims(edge: str = "r1-e7", region: str = "r1", *, tid: str = "t-000001", hours: float = 1) -> Claims:
    return Claims(
        edge=edge,
        region=region,
        expires=NOW + timedelta(hours=hours),
        token_id=tid,
        issuer=identity.public_key(ADMIN),
    )


def redeem(
    registry: Registry,
    token: Claims,
    *,
    edge: str = "r1-e7",
    key: str = "UKEY1",
    machine: str = "m1",
    policy: admission.Policy = "token",
    max_edges: int = 100,
    now: datetime = NOW,
) -> tuple[Registry, admission.Answer]:
    return admission.redeem(
        registry, token, region="r1", edge=edge, nkey=key, machine_id=machine, policy=policy,
        max_edges=max_edges, now=now,
    )  # fmt: skip


def test_a_valid_token_admits_once_and_binds_the_key_and_machine():
    registry, answer = redeem(Registry(), claims())
    assert answer.status is Status.ADMITTED
    assert registry.admitted["r1-e7"].nkey == "UKEY1"
    assert registry.admitted["r1-e7"].machine_id == "m1"
    # The reply was lost: the same key and machine ask again and get the same answer.
    again, answer = redeem(registry, claims())
    assert answer.status is Status.ADMITTED
    assert again == registry
    # Someone who copied the token, with another key or machine: refused.
    for key, machine in (("UKEY2", "m1"), ("UKEY1", "m2")):
        _, answer = redeem(registry, claims(), key=key, machine=machine)
        assert answer.status is Status.REFUSED
        assert "used already" in answer.reason


@pytest.mark.parametrize(
    ("token", "now", "reason"),
    [
        (claims(region="r2"), NOW, "for region 'r2'"),
        (claims(edge="r1-e8"), NOW, "for edge 'r1-e8'"),
        (claims(hours=1), NOW + timedelta(hours=1), "expired"),
    ],
)
def test_a_token_for_another_edge_region_or_time_is_refused(token, now, reason):
    registry, answer = redeem(Registry(), token, now=now)
    assert answer.status is Status.REFUSED
    assert reason in answer.reason
    assert registry == Registry()


def test_approve_policy_holds_the_edge_pending_until_approved():
    registry, answer = redeem(Registry(), claims(), policy="approve")
    assert answer.status is Status.PENDING
    assert "r1-e7" not in registry.admitted
    approved = admission.approve(registry, "r1-e7")
    assert approved.admitted["r1-e7"].nkey == "UKEY1"
    with pytest.raises(admission.AdmissionError, match="not pending"):
        admission.approve(approved, "r1-e7")


def test_revoked_edges_need_a_new_token_which_binds_a_new_key():
    registry, _ = redeem(Registry(), claims())
    revoked, entry = admission.revoke(registry, "r1-e7", NOW)
    assert entry.nkey == "UKEY1"
    assert "r1-e7" not in revoked.admitted
    assert revoked.status("r1-e7") == "revoked"
    with pytest.raises(admission.AdmissionError, match="not admitted"):
        admission.revoke(revoked, "r1-e7", NOW)
    _, answer = redeem(revoked, claims())  # the old token: used
    assert answer.status is Status.REFUSED
    back, answer = redeem(revoked, claims(tid="t-000002"), key="UKEY9", machine="m9")
    assert answer.status is Status.ADMITTED
    assert back.admitted["r1-e7"].nkey == "UKEY9"
    assert "r1-e7" not in back.revoked


def test_a_full_region_refuses_new_edges_but_not_known_ones():
    registry, _ = redeem(Registry(), claims())
    _, answer = redeem(registry, claims("r1-e8", tid="t-000003"), edge="r1-e8", key="UKEY8", max_edges=1)
    assert answer.status is Status.REFUSED
    assert "at most 1 edges" in answer.reason
    _, answer = redeem(registry, claims(tid="t-000004"), key="UKEY5", max_edges=1)
    assert answer.status is Status.ADMITTED


def test_a_key_bound_to_one_edge_is_refused_for_another():
    registry, _ = redeem(Registry(), claims())
    _, answer = redeem(registry, claims("r1-e8", tid="t-000005"), edge="r1-e8", key="UKEY1")
    assert answer.status is Status.REFUSED
    assert "another edge's" in answer.reason


def test_tokens_verify_only_with_a_trusted_issuer_and_an_intact_signature():
    token, made = enrolltoken.create(edge="r1-e7", region="r1", expires=NOW, seed=ADMIN, url="nats://r1:4222")
    assert enrolltoken.verify(token, ISSUERS) == made
    assert enrolltoken.unverified_claims(token) == made
    with pytest.raises(TokenError, match="not issued by an operator"):
        enrolltoken.verify(token, frozenset({identity.public_key(identity.generate_seed())}))
    prefix, body, signature = token.split(".")
    forged_claims = made.model_copy(update={"edge": "r1-e8"}).model_dump_json().encode()
    for tampered in (
        f"{prefix}.{enrolltoken._b64(forged_claims)}.{signature}",  # another edge, same signature
        f"{prefix}.{body}.{signature[:-4]}AAAA",
    ):
        with pytest.raises(TokenError):
            enrolltoken.verify(tampered, ISSUERS)


def test_the_reply_proof_needs_the_token():
    token, _ = enrolltoken.create(edge="r1-e7", region="r1", expires=NOW, seed=ADMIN)
    proof = enrolltoken.reply_proof(token, "r1", "r1-e7", "admitted", "")
    assert enrolltoken.proof_ok(token, proof, "r1", "r1-e7", "admitted", "")
    assert enrolltoken.user_key(identity.public_key(ADMIN))
    key = identity.public_key(ADMIN)
    changed = key[:-1] + ("B" if key.endswith("A") else "A")  # (a random key may end in A)
    for bad in ("", "UKEY1", "N" + key[1:], changed):
        with pytest.raises(ValueError, match="not a user public key"):
            enrolltoken.user_key(bad)
    assert not enrolltoken.proof_ok(token, proof, "r1", "r1-e7", "refused", "")
    other, _ = enrolltoken.create(edge="r1-e7", region="r1", expires=NOW, seed=ADMIN)
    assert not enrolltoken.proof_ok(other, proof, "r1", "r1-e7", "admitted", "")


@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_no_string_makes_token_checks_raise_anything_but_token_error(text):
    for check in (lambda: enrolltoken.verify(text, ISSUERS), lambda: enrolltoken.unverified_claims(text)):
        with contextlib.suppress(TokenError):
            check()


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567-_=.", max_size=300))
def test_token_shaped_garbage_raises_only_token_error(text):
    with contextlib.suppress(TokenError):
        enrolltoken.verify(f"fbt1.{text}", ISSUERS)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("1.5d", 129600)])
def test_token_lifetimes_parse(text, seconds):
    assert parse_duration("--expires", text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0h", "-1h", "24", "1w", "366d", "99999999999999d", "nan"])
def test_token_lifetimes_out_of_range_name_the_option(text):
    with pytest.raises(ConfigError, match="--expires"):
        parse_duration("--expires", text)
