"""core/policy_config.py, pure: the API's JSON for a policy → the model and back. Every field's checks, unknown
fields anywhere a 400 naming them, the bounds, stable rule ids and the canonical round trip."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agentledger.core.budgets import Scope
from agentledger.core.errors import InvalidRequest
from agentledger.core.policy import Conditions, MaxTokensAction, Mode, Rule, RuleAction, Settings, TimeWindow
from agentledger.core.policy_config import (
    CONDITION_KEYS,
    MAX_ENTRIES,
    MAX_LIST,
    MAX_RULES,
    SETTING_KEYS,
    parse_policy,
    parse_rules,
    parse_settings,
    policy_json,
)

WINDOW = {"days": ["mon", "tue"], "start": "22:00", "end": "06:00", "tz": "Europe/Paris"}

# Canonical: policy_json gives back exactly this.
FULL: dict[str, Any] = {
    "name": "prod guard",
    "scope": "department",
    "scope_value": "research",
    "mode": "monitor",
    "settings": {
        "models_allow": ["gpt-4o*", "claude-*"],
        "models_deny": ["*-preview"],
        "providers_allow": ["openai"],
        "providers_deny": [],
        "max_tokens": 4000,
        "max_tokens_action": "block",
        "time_windows": [WINDOW],
        "ip_allow": ["10.0.0.0/8", "2001:db8::/32"],
        "required_headers": ["alephant-run-id"],
        "prompt_ids_allow": ["summarize"],
        "requests_per_minute": 60,
        "tokens_per_minute": 100000,
        "concurrent": 4,
        "approval_wait_s": 120,
        "max_run_steps": 200,
        "max_run_model_calls": 50,
        "max_run_duration_s": 3600,
        "max_run_cost_usd": "2.500000000",
        "loop_repeats": 3,
    },
    "rules": [
        {
            "id": "r1",
            "name": "big spend",
            "when": {
                "kinds": ["payment", "tool_call"],
                "models": ["o1*"],
                "models_not": ["o1-mini"],
                "providers": ["openai"],
                "providers_not": ["azure"],
                "names": ["pay*"],
                "names_not": ["refund"],
                "max_tokens_over": 8000,
                "cost_over_usd": "5.000000000",
                "hours": [WINDOW],
                "outside_hours": [{"days": ["sun"], "start": "00:00", "end": "24:00", "tz": "UTC"}],
                "ip_in": ["192.168.0.0/16"],
                "ip_not_in": ["::1/128"],
                "missing_headers": ["x-team"],
                "prompt_ids": ["plan"],
                "prompt_ids_not": ["a", "b"],
                "properties": {"customer": "acme*", "env": "prod"},
                "run_steps_over": 10,
                "run_model_calls_over": 5,
                "run_duration_over_s": 60.5,
                "run_cost_over_usd": "1.000000000",
                "repeated_over": 2,
                "pii": ["email", "iban"],
            },
            "action": "escalate",
            "message": "needs finance",
        },
        {"id": "slow", "when": {}, "action": "throttle", "throttle_rpm": 10},
        {"id": "r3", "when": {"pii": ["email"]}, "action": "redact", "redact": ["email", "phone"]},
        {"id": "r4", "when": {}, "action": "alert"},
    ],
}


def parse(body: dict[str, Any]) -> Any:
    return parse_policy(body, id="pol", version=1)


def refused(body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_policy(body, id="pol", version=1)
    assert info.value.status == 400
    return info.value


def base(**extra: Any) -> dict[str, Any]:
    return {"name": "p", "scope": "workspace", **extra}


def with_rule(rule: dict[str, Any]) -> dict[str, Any]:
    return base(rules=[rule])


# ------------------------------------------------------------------------------------------------- round trip


def test_every_setting_and_condition_is_in_the_full_example() -> None:
    assert set(FULL["settings"]) == set(SETTING_KEYS)
    assert set(FULL["rules"][0]["when"]) == set(CONDITION_KEYS)


def test_canonical_json_round_trips_exactly() -> None:
    policy = parse(copy.deepcopy(FULL))
    assert policy_json(policy) == FULL
    assert parse(policy_json(policy)) == policy


def test_the_model_holds_what_the_json_says() -> None:
    policy = parse(copy.deepcopy(FULL))
    assert (policy.id, policy.version, policy.scope, policy.scope_value, policy.mode) == (
        "pol",
        1,
        Scope.DEPARTMENT,
        "research",
        Mode.MONITOR,
    )
    s = policy.settings
    assert s.max_tokens_action is MaxTokensAction.BLOCK and s.max_run_cost_nanos == 2_500_000_000
    assert s.time_windows == (TimeWindow((0, 1), 22 * 60, 6 * 60, "Europe/Paris"),)
    assert s.providers_deny == ()  # set, and empty: lifts a broader deny list
    rule = policy.rules[0]
    assert rule.when.cost_over_nanos == 5 * 10**9 and rule.when.run_cost_over_nanos == 10**9
    assert rule.when.properties == (("customer", "acme*"), ("env", "prod"))
    assert rule.action is RuleAction.ESCALATE
    assert policy.rules[2].redact == {"email", "phone"}


def test_input_is_normalized_into_the_canonical_form() -> None:
    policy = parse(
        base(
            name="  trimmed  ",
            settings={
                "ip_allow": ["10.1.2.3/8", "192.168.1.1", "2001:DB8::1/32"],
                "required_headers": ["X-Team"],
                "max_run_cost_usd": 0.1,
                "time_windows": [{"days": ["FRI", "mon", "fri"], "start": "09:00", "end": "17:30"}],
                "models_allow": None,  # null: not set
            },
            rules=[{"action": "block", "when": {"kinds": ["Tool_Call"], "run_cost_over_usd": 3}}],
        )
    )
    out = policy_json(policy)
    assert out["name"] == "trimmed"
    assert out["settings"] == {
        "time_windows": [{"days": ["mon", "fri"], "start": "09:00", "end": "17:30", "tz": "UTC"}],
        "ip_allow": ["10.0.0.0/8", "192.168.1.1/32", "2001:db8::/32"],
        "required_headers": ["x-team"],
        "max_run_cost_usd": "0.100000000",
    }
    assert out["rules"] == [
        {"id": "r1", "when": {"kinds": ["tool_call"], "run_cost_over_usd": "3.000000000"}, "action": "block"}
    ]
    assert parse(out) == policy


def test_defaults() -> None:
    policy = parse(base())
    assert (policy.mode, policy.settings, policy.rules, policy.scope_value) == (Mode.ENFORCE, Settings(), (), None)
    assert parse_rules([{"action": "alert"}]) == (Rule(id="r1", action=RuleAction.ALERT, when=Conditions()),)


# -------------------------------------------------------------------------------------------------- rule ids


def test_rules_without_ids_get_their_position_and_keep_it_after_a_round_trip() -> None:
    rules = parse_rules([{"action": "alert"}, {"id": "named", "action": "block"}, {"action": "allow"}])
    assert [r.id for r in rules] == ["r1", "named", "r3"]
    stored = policy_json(parse(base(rules=[{"action": "alert"}, {"action": "block"}])))
    stored["rules"].insert(0, {"action": "allow"})  # a rule added in front: the stored ones keep their ids
    stored["rules"][0]["id"] = "new"
    assert [r.id for r in parse(stored).rules] == ["new", "r1", "r2"]


@pytest.mark.parametrize(
    ("rules", "param"),
    [
        ([{"id": "a", "action": "alert"}, {"id": "a", "action": "block"}], "rules[1].id"),
        ([{"id": "r2", "action": "alert"}, {"action": "block"}], "rules[1].id"),  # the generated id is taken
        ([{"id": "has space", "action": "alert"}], "rules[0].id"),
        ([{"id": "", "action": "alert"}], "rules[0].id"),
    ],
)
def test_rule_ids_must_be_ids_and_unique(rules: list[dict[str, Any]], param: str) -> None:
    assert refused(base(rules=rules)).param == param


# -------------------------------------------------------------------------------------------- unknown fields


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (base(enabled=True), "enabled"),
        (base(settings={"modles_allow": ["x"]}), "settings.modles_allow"),
        (base(settings={"time_windows": [{**WINDOW, "timezone": "UTC"}]}), "settings.time_windows[0].timezone"),
        (with_rule({"action": "block", "when": {"model": ["x"]}}), "rules[0].when.model"),
        (with_rule({"action": "block", "condition": {}}), "rules[0].condition"),
        (with_rule({"action": "block", "when": {"hours": [{**WINDOW, "stop": "1"}]}}), "rules[0].when.hours[0].stop"),
        (base(settings={"cost_over_usd": 1}), "settings.cost_over_usd"),  # a condition is not a setting
        (with_rule({"action": "block", "when": {"max_tokens": 5}}), "rules[0].when.max_tokens"),
        (with_rule({"action": "block", "when": {"max_run_cost_nanos": 5}}), "rules[0].when.max_run_cost_nanos"),
    ],
)
def test_unknown_fields_anywhere_are_refused_by_name(body: dict[str, Any], param: str) -> None:
    error = refused(body)
    assert error.param == param
    assert repr(param) in error.message


# --------------------------------------------------------------------------------------------- field checks


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ("not an object", ""),
        ({"scope": "workspace"}, "name"),
        (base(name=""), "name"),
        (base(name="x" * 257), "name"),
        (base(name="a\x00b"), "name"),
        (base(scope="property"), "scope"),
        (base(scope="workflow"), "scope"),
        (base(scope=None), "scope"),
        (base(scope_value="ws"), "scope_value"),
        ({"name": "p", "scope": "agent"}, "scope_value"),
        ({"name": "p", "scope": "agent", "scope_value": " "}, "scope_value"),
        (base(mode="dry_run"), "mode"),
        (base(settings=[]), "settings"),
        (base(rules={}), "rules"),
        (base(rules=["block"]), "rules[0]"),
        (base(settings={"models_allow": "gpt-4o"}), "settings.models_allow"),
        (base(settings={"models_allow": [""]}), "settings.models_allow[0]"),
        (base(settings={"models_allow": [7]}), "settings.models_allow[0]"),
        (base(settings={"max_tokens": 0}), "settings.max_tokens"),
        (base(settings={"max_tokens": True}), "settings.max_tokens"),
        (base(settings={"max_tokens": 10.0}), "settings.max_tokens"),
        (base(settings={"max_tokens_action": "clamp"}), "settings.max_tokens_action"),
        (base(settings={"max_tokens": 5, "max_tokens_action": "cut"}), "settings.max_tokens_action"),
        (base(settings={"approval_wait_s": 301}), "settings.approval_wait_s"),
        (base(settings={"approval_wait_s": -1}), "settings.approval_wait_s"),
        (base(settings={"approval_wait_s": float("nan")}), "settings.approval_wait_s"),
        (base(settings={"max_run_duration_s": 0}), "settings.max_run_duration_s"),
        (base(settings={"loop_repeats": 1}), "settings.loop_repeats"),
        (base(settings={"requests_per_minute": 10_000_001}), "settings.requests_per_minute"),
        (base(settings={"max_run_cost_usd": "-1"}), "settings.max_run_cost_usd"),
        (base(settings={"max_run_cost_usd": "1e3"}), "settings.max_run_cost_usd"),
        (base(settings={"max_run_cost_usd": True}), "settings.max_run_cost_usd"),
        (base(settings={"max_run_cost_usd": float("inf")}), "settings.max_run_cost_usd"),
        (base(settings={"max_run_cost_usd": "1000000001"}), "settings.max_run_cost_usd"),
        (base(settings={"ip_allow": ["10.0.0.0/33"]}), "settings.ip_allow[0]"),
        (base(settings={"ip_allow": ["example.com"]}), "settings.ip_allow[0]"),
        (base(settings={"required_headers": ["bad header"]}), "settings.required_headers[0]"),
        (base(settings={"prompt_ids_allow": ["a/b"]}), "settings.prompt_ids_allow[0]"),
        (base(settings={"time_windows": [{**WINDOW, "tz": "Mars/Olympus"}]}), "settings.time_windows[0].tz"),
        (base(settings={"time_windows": [{**WINDOW, "tz": "../../etc/passwd"}]}), "settings.time_windows[0].tz"),
        (base(settings={"time_windows": [{**WINDOW, "tz": "Europe"}]}), "settings.time_windows[0].tz"),
        (base(settings={"time_windows": [{**WINDOW, "days": ["monday"]}]}), "settings.time_windows[0].days[0]"),
        (base(settings={"time_windows": [{**WINDOW, "days": []}]}), "settings.time_windows[0].days"),
        (base(settings={"time_windows": [{**WINDOW, "start": "9:00"}]}), "settings.time_windows[0].start"),
        (base(settings={"time_windows": [{**WINDOW, "start": "24:00"}]}), "settings.time_windows[0].start"),
        (base(settings={"time_windows": [{**WINDOW, "end": "24:01"}]}), "settings.time_windows[0].end"),
        (base(settings={"time_windows": [{**WINDOW, "end": "22:00"}]}), "settings.time_windows[0].end"),
        (base(settings={"time_windows": [{**WINDOW, "start": None}]}), "settings.time_windows[0].start"),
        (with_rule({}), "rules[0].action"),
        (with_rule({"action": "deny"}), "rules[0].action"),
        (with_rule({"action": "throttle"}), "rules[0].throttle_rpm"),
        (with_rule({"action": "throttle", "throttle_rpm": 0}), "rules[0].throttle_rpm"),
        (with_rule({"action": "block", "throttle_rpm": 5}), "rules[0].throttle_rpm"),
        (with_rule({"action": "redact"}), "rules[0].redact"),
        (with_rule({"action": "redact", "redact": []}), "rules[0].redact"),
        (with_rule({"action": "redact", "redact": ["passport"]}), "rules[0].redact[0]"),
        (with_rule({"action": "alert", "redact": ["email"]}), "rules[0].redact"),
        (with_rule({"action": "alert", "message": ""}), "rules[0].message"),
        (with_rule({"action": "alert", "name": 5}), "rules[0].name"),
        (with_rule({"action": "alert", "when": []}), "rules[0].when"),
        (with_rule({"action": "block", "when": {"models": []}}), "rules[0].when.models"),
        (with_rule({"action": "block", "when": {"kinds": []}}), "rules[0].when.kinds"),
        (with_rule({"action": "block", "when": {"kinds": ["tool call"]}}), "rules[0].when.kinds[0]"),
        (with_rule({"action": "block", "when": {"hours": []}}), "rules[0].when.hours"),
        (with_rule({"action": "block", "when": {"ip_in": ["1.2.3"]}}), "rules[0].when.ip_in[0]"),
        (with_rule({"action": "block", "when": {"missing_headers": []}}), "rules[0].when.missing_headers"),
        (with_rule({"action": "block", "when": {"prompt_ids": []}}), "rules[0].when.prompt_ids"),
        (with_rule({"action": "block", "when": {"properties": {}}}), "rules[0].when.properties"),
        (
            with_rule({"action": "block", "when": {"properties": {"Bad Name": "x"}}}),
            "rules[0].when.properties.Bad Name",
        ),
        (with_rule({"action": "block", "when": {"properties": {"env": 1}}}), "rules[0].when.properties.env"),
        (with_rule({"action": "block", "when": {"pii": ["dna"]}}), "rules[0].when.pii[0]"),
        (with_rule({"action": "block", "when": {"pii": [["email"]]}}), "rules[0].when.pii[0]"),  # was a TypeError
        (with_rule({"action": "block", "when": {"max_tokens_over": -1}}), "rules[0].when.max_tokens_over"),
        (with_rule({"action": "block", "when": {"repeated_over": 0}}), "rules[0].when.repeated_over"),
        (with_rule({"action": "block", "when": {"cost_over_usd": "abc"}}), "rules[0].when.cost_over_usd"),
        (with_rule({"action": "block", "when": {"run_duration_over_s": "60"}}), "rules[0].when.run_duration_over_s"),
    ],
)
def test_bad_fields_are_refused_by_name(body: Any, param: str) -> None:
    assert refused(body).param == (param or None)


# ----------------------------------------------------------------------------------------------------- bounds


def test_bounds_on_lists_and_strings() -> None:
    rule = {"action": "alert"}
    parse(base(rules=[rule] * MAX_RULES))
    assert refused(base(rules=[rule] * (MAX_RULES + 1))).param == "rules"
    parse(base(settings={"models_deny": ["m"] * MAX_LIST}))
    assert refused(base(settings={"models_deny": ["m"] * (MAX_LIST + 1)})).param == "settings.models_deny"
    assert refused(with_rule({"action": "block", "when": {"names": ["n"] * (MAX_LIST + 1)}})).param == (
        "rules[0].when.names"
    )
    parse(base(settings={"models_deny": ["m" * 256]}))
    assert refused(base(settings={"models_deny": ["m" * 257]})).param == "settings.models_deny[0]"
    parse(with_rule({"action": "alert", "message": "m" * 1024, "name": "n" * 256}))
    assert refused(with_rule({"action": "alert", "message": "m" * 1025})).param == "rules[0].message"
    assert refused(with_rule({"action": "alert", "name": "n" * 257})).param == "rules[0].name"
    assert refused(base(settings={"time_windows": [WINDOW] * 65})).param == "settings.time_windows"
    props = {f"p{i}": "*" for i in range(33)}
    assert refused(with_rule({"action": "block", "when": {"properties": props}})).param == "rules[0].when.properties"
    assert refused(base(scope="agent", scope_value="a" * 1025)).param == "scope_value"


def test_a_whole_policy_holds_a_bounded_number_of_list_entries() -> None:
    full = {"when": {"names": ["n"] * MAX_LIST}, "action": "block"}
    parse(base(rules=[full] * (MAX_ENTRIES // MAX_LIST)))
    assert refused(
        base(rules=[full] * (MAX_ENTRIES // MAX_LIST) + [{"when": {"names": ["x"]}, "action": "block"}])
    ).param == (f"rules[{MAX_ENTRIES // MAX_LIST}]")
    assert refused(base(settings={"models_allow": ["m"] * MAX_LIST}, rules=[full] * 4 + [full])).param == "rules[4]"


def test_settings_and_rules_parse_on_their_own_for_partial_updates() -> None:
    assert parse_settings({"max_tokens": 5}, "patch.settings").max_tokens == 5
    with pytest.raises(InvalidRequest) as info:
        parse_settings({"nope": 1}, "patch.settings")
    assert info.value.param == "patch.settings.nope"


# ----------------------------------------------------------------------------------------------------- fuzzing

_KEYS = [
    "name",
    "scope",
    "scope_value",
    "mode",
    "settings",
    "rules",
    "when",
    "action",
    "id",
    "days",
    "start",
    "end",
    "tz",
    "throttle_rpm",
    "redact",
    *SETTING_KEYS,
    *CONDITION_KEYS,
]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**10)
    | st.floats()
    | st.sampled_from(
        ["workspace", "agent", "block", "throttle", "redact", "email", "09:00", "24:00", "UTC", "10.0.0.0/8", "*", ""]
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=_json,
    settings_=st.dictionaries(st.sampled_from(list(SETTING_KEYS)), _json, max_size=4),
    when=st.dictionaries(st.sampled_from(list(CONDITION_KEYS)), _json, max_size=4),
)
def test_random_json_raises_nothing_but_invalid_request(
    body: Any, settings_: dict[str, Any], when: dict[str, Any]
) -> None:
    for candidate in (body, base(settings=settings_), with_rule({"action": "block", "when": when})):
        try:
            policy = parse_policy(candidate, id="p", version=1)
        except InvalidRequest:
            continue
        assert parse_policy(policy_json(policy), id="p", version=1) == policy
