"""The pure core of desired state: selectors, merge patch, effective state, hash, explain."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetbus.core.compliance import DesiredMemo, assess
from fleetbus.core.desired import compute, content_hash
from fleetbus.core.mergepatch import apply, apply_tracked, leaves
from fleetbus.core.selector import matches
from schemas.event import ApplyResult, ApplyStatus, Event, Severity
from schemas.override import Override, OverrideScope, OverrideTarget
from schemas.profile import Component, LabelRequirement, LabelSelector, Profile, ProfileSpec, SelectorOperator
from tests.strategies import ids, json_values, labels, overrides, profiles

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

# RFC 7386, Appendix A: every example, verbatim.
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC7386)
def test_merge_patch_matches_rfc7386(target, patch, expected):
    before = repr(target)
    assert apply(target, patch) == expected
    assert repr(target) == before  # never mutates


json_objects = st.dictionaries(
    st.sampled_from("abcd"),
    json_values | st.dictionaries(st.sampled_from("abcd"), json_values, max_size=3),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_objects, min_size=1, max_size=5))
def test_provenance_names_exactly_the_leaves_and_the_layer_that_wrote_them(patches):
    provenance: dict = {}
    document: object = {}
    for index, patch in enumerate(patches):
        document = apply_tracked(document, patch, source=f"layer{index}", provenance=provenance)
        assert apply(document, patch) == document  # idempotent
    assert set(provenance) == set(leaves(document))
    for path, source in provenance.items():
        value = leaves(document)[path]
        if value != {}:  # a scalar or list leaf: the named layer holds exactly this value there
            layer: object = patches[int(source.removeprefix("layer"))]
            for key in path:
                layer = layer[key]  # type: ignore[index]
            assert layer == value


def test_selector_semantics():
    site = {"region": "eu", "tier": "store", "size": "l"}

    def sel(*reqs, **match):
        return LabelSelector(match_labels=match, match_expressions=list(reqs))

    def req(key, op, *values):
        return LabelRequirement(key=key, operator=op, values=list(values))

    assert matches(sel(), site)
    assert matches(sel(region="eu"), site)
    assert not matches(sel(region="us"), site)
    assert matches(sel(req("size", SelectorOperator.IN, "m", "l")), site)
    assert not matches(sel(req("size", SelectorOperator.NOT_IN, "l")), site)
    assert matches(sel(req("missing", SelectorOperator.NOT_IN, "x")), site)  # Kubernetes semantics
    assert matches(sel(req("tier", SelectorOperator.EXISTS)), site)
    assert not matches(sel(req("tier", SelectorOperator.DOES_NOT_EXIST)), site)
    assert not matches(sel(req("missing", SelectorOperator.IN, "x")), site)


@settings(max_examples=100, deadline=None)
@given(labels, st.data())
def test_a_selector_of_a_sites_own_labels_matches_it(site_labels, data):
    subset = data.draw(st.sets(st.sampled_from(sorted(site_labels))) if site_labels else st.just(set()))
    assert matches(LabelSelector(match_labels={k: site_labels[k] for k in subset}), site_labels)


def profile(name, priority=0, revision=1, selector=None, config=None, **components):
    return Profile(
        name=name,
        priority=priority,
        revision=revision,
        selector=selector or LabelSelector(),
        spec=ProfileSpec(
            components=[Component(name=c, image=f"reg/{c}", version=v) for c, v in components.items()],
            config=config or {},
        ),
    )


def override(scope, name, patch, *, minutes_ago=1, expires_in=None, owner="ops", reason="incident 42"):
    return Override(
        target=OverrideTarget(scope=scope, name=name),
        patch=patch,
        owner=owner,
        reason=reason,
        created_at=NOW - timedelta(minutes=minutes_ago),
        expires_at=None if expires_in is None else NOW + timedelta(minutes=expires_in),
    )


def test_priority_then_overrides_and_explain_names_each_layer():
    base = profile(
        "base", priority=0, revision=3, pos="1.0", agent="2.0", config={"log": "info", "tz": "UTC"}
    )
    eu = profile(
        "eu",
        priority=10,
        revision=7,
        selector=LabelSelector(match_labels={"region": "eu"}),
        pos="1.1",
        config={"tz": "CET"},
    )
    us = profile("us", priority=20, selector=LabelSelector(match_labels={"region": "us"}), pos="9.9")
    overrides = [
        override(OverrideScope.GROUP, "eu", {"config": {"log": "warn"}}, minutes_ago=5),
        override(OverrideScope.EDGE, "e1", {"config": {"log": "debug"}, "components": {"agent": None}}),
        override(OverrideScope.EDGE, "e2", {"config": {"log": "trace"}}),
        override(OverrideScope.EDGE, "e1", {"config": {"tz": "Mars"}}, minutes_ago=60, expires_in=-1),
    ]
    state = compute([us, eu, base], {"region": "eu"}, edge="e1", groups=["eu"], overrides=overrides, now=NOW)
    assert state.document["components"] == {"pos": {"image": "reg/pos", "version": "1.1", "config": {}}}
    assert state.document["config"] == {"log": "debug", "tz": "CET"}  # expired override ignored
    assert state.profile_revisions == {"base": 3, "eu": 7}
    explained = {path: layer for path, _, layer in state.explain()}
    assert explained["config.log"] == "override edge/e1 (ops: incident 42)"
    assert explained["config.tz"] == "profile eu@7"
    assert explained["components.pos.version"] == "profile eu@7"
    assert explained["components.pos.image"] == "profile eu@7"
    assert "components.agent.version" not in explained

    # The other edge in the same group: group override applies, e1's do not.
    other = compute([us, eu, base], {"region": "eu"}, edge="e3", groups=["eu"], overrides=overrides, now=NOW)
    assert other.document["config"]["log"] == "warn"
    assert other.document["components"]["agent"]["version"] == "2.0"
    assert other.hash != state.hash


@settings(max_examples=50, deadline=None)
@given(st.lists(profiles, max_size=5, unique_by=lambda p: p.name), labels, st.randoms())
def test_result_does_not_depend_on_input_order(profile_list, site_labels, rnd: random.Random):
    first = compute(profile_list, site_labels, edge="e1", now=NOW)
    shuffled = list(profile_list)
    rnd.shuffle(shuffled)
    second = compute(shuffled, site_labels, edge="e1", now=NOW)
    assert (first.document, first.hash, first.provenance) == (second.document, second.hash, second.provenance)
    assert set(first.provenance) == set(leaves(first.document))


def test_hash_is_canonical():
    assert content_hash({"a": 1, "b": {"c": [1, 2]}}) == content_hash({"b": {"c": [1, 2]}, "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})
    assert content_hash({"a": 1}).startswith("sha256:")


ALIKE = [{"env": "dev"}, {"env": "prod", "tier": "a"}]  # labels edges share (memo hits)
EDGES, GROUPS = ["r1-e1", "r1-e2", "r2-e1"], ["g1", "g2"]
overrides_here = st.builds(
    Override,
    target=st.one_of(
        st.builds(OverrideTarget, scope=st.just(OverrideScope.EDGE), name=st.sampled_from(EDGES)),
        st.builds(OverrideTarget, scope=st.just(OverrideScope.GROUP), name=st.sampled_from(GROUPS)),
    ),
    patch=st.dictionaries(st.sampled_from(["config", "x"]), json_values, max_size=2),
    owner=st.just("ops"),
    reason=st.just("test"),
    created_at=st.just(NOW - timedelta(hours=1)),
    expires_at=st.none() | st.just(NOW - timedelta(minutes=1)) | st.just(NOW + timedelta(hours=1)),
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(profiles, max_size=4, unique_by=lambda p: p.name),
    st.lists(overrides | overrides_here, max_size=3),
    st.lists(
        st.tuples(
            st.sampled_from(EDGES),
            st.sampled_from(ALIKE) | labels,
            st.lists(st.sampled_from(GROUPS) | ids, max_size=2, unique=True),
        ),
        max_size=6,
    ),
)
def test_compliance_with_a_memo_is_compliance_without(profile_list, override_list, edges):
    """The hub's view shares desired states between edges alike (`assess(memo=)`): edge by
    edge with one memo, every row is what assess computes without it."""
    reports = [
        Event(
            id=f"{n}",
            kind="apply_result",
            region=edge.split("-")[0],
            edge=edge,
            observed_at=NOW,
            severity=Severity.INFO,
            message="",
            apply_result=ApplyResult(
                desired_hash="sha256:x",
                profile_revisions={},
                status=ApplyStatus.APPLIED,
                driver="null",
                duration_seconds=0,
                labels=edge_labels,
                groups=groups,
            ),
        )
        for n, (edge, edge_labels, groups) in enumerate(edges)
    ]
    memo: DesiredMemo = {}
    for report in reports:
        alone = assess(profile_list, override_list, [report], now=NOW)
        shared = assess(profile_list, override_list, [report], now=NOW, memo=memo)
        assert shared == alone
