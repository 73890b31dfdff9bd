"""An action's JSON document as the outbox stores it and the relay reads it back.

The relay reads back every outbox row it delivers; ``Action.from_json`` keeps the stored bytes and
decodes them only when a field is first read. These properties hold whichever field is read first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartico_stream.engine.actions import Action, ActionKind, action_id

FIELDS = ["action_id", "rule_id", "action", "params", "brand", "user", "event_id", "event_type", "event_time",
          "executions"]
names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
params = st.dictionaries(
    st.sampled_from(["amount", "tag", "level", "bonus_id", "note"]),
    st.one_of(st.integers(-10**6, 10**6), names, st.decimals(allow_nan=False, allow_infinity=False, places=2)),
    max_size=4,
)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]))


@st.composite
def actions(draw: st.DrawFn) -> Action:
    brand, event_id, rule_id = draw(names), draw(names), draw(names)
    executions, index = draw(st.integers(1, 1000)), draw(st.integers(0, 4))
    moment = draw(moments)
    return Action(action_id(brand, event_id, rule_id, index), rule_id, draw(st.sampled_from(ActionKind)),
                  draw(params), brand, draw(names), event_id, draw(names),
                  moment.replace(microsecond=moment.microsecond // 1000 * 1000), executions)


@given(actions(), st.sampled_from(FIELDS))
def test_read_back_action_has_the_written_fields_whichever_is_read_first(action: Action, first: str) -> None:
    stored = action.to_json()
    read = Action.from_json(stored)
    getattr(read, first)
    assert read.to_json() == stored  # the stored bytes are sent on as they are
    expected = action.as_dict()
    assert {name: getattr(read, name) for name in FIELDS} == {
        **expected, "action": action.action, "event_time": action.event_time,
    }
    assert read == Action.from_json(stored)


@given(actions())
def test_read_back_action_sends_its_bytes_without_decoding_them(action: Action) -> None:
    stored = action.to_json()
    read = Action.from_json(stored.decode())
    assert read.to_json() == stored
    assert read.encoded == stored


def test_a_missing_attribute_of_a_read_back_action_is_an_attribute_error() -> None:
    action = Action("a/e/r/0", "r", ActionKind.GIVE_POINTS, {"amount": Decimal(1)}, "a", "u", "e", "deposit",
                    datetime(2026, 1, 1, tzinfo=UTC), 1)
    read = Action.from_json(action.to_json())
    with pytest.raises(AttributeError, match="'Action' object has no attribute 'amount'"):
        read.amount  # noqa: B018 - the access is the test
    assert read.user == "u"


def test_the_json_document_has_executions_and_a_four_part_id() -> None:
    action = Action(action_id("b1", "d1", "deposit-points", 0), "deposit-points", ActionKind.GIVE_POINTS,
                    {"amount": Decimal(19)}, "b1", "u1", "d1", "deposit", datetime(2025, 3, 3, 10, tzinfo=UTC), 19)
    assert action.to_json() == (
        b'{"action":"give_points","action_id":"b1/d1/deposit-points/0","brand":"b1","event_id":"d1",'
        b'"event_time":"2025-03-03T10:00:00.000Z","event_type":"deposit","executions":19,"params":{"amount":"19"},'
        b'"rule_id":"deposit-points","user":"u1"}'
    )


# An outbox row as the version before one action per firing wrote it: the third of three
# executions of one firing, with the execution index in the id and an "execution" key.
OLD_ROW = (b'{"action":"give_points","action_id":"b1/d1/deposit-points/3/0","brand":"b1","event_id":"d1",'
           b'"event_time":"2025-03-03T10:00:00.000Z","event_type":"deposit","execution":3,"params":{"amount":"1"},'
           b'"rule_id":"deposit-points","user":"u1"}')


@pytest.mark.parametrize("first", FIELDS)
def test_a_row_written_before_one_action_per_firing_decodes_as_one_execution(first: str) -> None:
    read = Action.from_json(OLD_ROW)
    getattr(read, first)
    assert read.executions == 1  # each old row stands for one execution
    assert (read.action_id, read.action, read.params, read.user) == (
        "b1/d1/deposit-points/3/0", ActionKind.GIVE_POINTS, {"amount": "1"}, "u1")
    assert read.to_json() == OLD_ROW  # delivered as it was written
    assert read.as_dict()["executions"] == 1
