"""The replica source's pure parts: query building per dialect, cursor encoding, rows as the
adapter sees them, scan hours, and settings errors naming the setting."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from smartico_stream.config import ConfigError, load_settings
from smartico_stream.sources.replica.cursor import (
    CursorError,
    Position,
    decode_position,
    encode_position,
    native_row,
)
from smartico_stream.sources.replica.dialect import ViewQuery, available_dialects, load_dialect
from smartico_stream.sources.replica.settings import ViewSettings

DEPOSITS = ViewQuery("ops.deposits", ("dt_finalized", "brand", "transaction_id"), "timestamp")


def test_both_dialects_are_installed_as_plugins():
    assert {"postgresql", "mysql"} <= set(available_dialects())


def test_postgres_query_resumes_after_the_last_row_by_time_then_ids():
    sql, args = load_dialect("postgresql").page_query(
        DEPOSITS, Position((datetime(2026, 1, 1), "b1", "t9")), 500, 5.0)
    assert sql == (
        'SELECT * FROM "ops"."deposits" WHERE "dt_finalized" >= $1 AND ("dt_finalized" > $2 OR '
        '("dt_finalized" = $3 AND (("brand" > $4 OR ("brand" = $5 AND ("transaction_id" > $6)))))) AND '
        '"dt_finalized" < now() - make_interval(secs => $7::double precision) '
        'ORDER BY "dt_finalized", "brand", "transaction_id" LIMIT 500'
    )
    assert args == [datetime(2026, 1, 1)] * 3 + ["b1", "b1", "t9", 5.0]


def test_mysql_binds_in_the_order_the_placeholders_appear():
    sql, args = load_dialect("mysql").page_query(DEPOSITS, Position((datetime(2026, 1, 1), "b1", "t9")), 10, 2.0)
    assert sql.startswith("SELECT * FROM `ops`.`deposits` WHERE `dt_finalized` >= %s AND (`dt_finalized` > %s OR "
                          "(`dt_finalized` = %s AND")
    assert sql.endswith("ORDER BY `dt_finalized`, `brand`, `transaction_id` LIMIT 10")
    assert args == [datetime(2026, 1, 1)] * 3 + ["b1", "b1", "t9", 2.0]


def test_a_start_position_is_inclusive_and_an_id_view_has_no_visibility_bound():
    sql, args = load_dialect("postgresql").page_query(DEPOSITS, Position((datetime(2026, 1, 1),), True), 5, 1.0)
    assert '"dt_finalized" >= $1 AND' in sql and args[0] == datetime(2026, 1, 1)
    by_id = ViewQuery("bets", ("id",), "id")
    assert load_dialect("postgresql").page_query(by_id, None, 5, 1.0) == ('SELECT * FROM "bets" ORDER BY "id" LIMIT 5',
                                                                         [])
    assert load_dialect("mysql").page_query(by_id, Position((41,)), 5, 1.0) == (
        "SELECT * FROM `bets` WHERE `id` > %s ORDER BY `id` LIMIT 5", [41])


@pytest.mark.parametrize("values", [
    (datetime(2026, 1, 1, 12, 0, 0, 123000), "t1"),
    (datetime(2026, 1, 1, tzinfo=UTC), 7),
    (2**70,),
    (Decimal("12.50"), uuid.UUID(int=5), date(2026, 2, 3), b"\x00\xff"),
])
def test_positions_keep_their_types_through_the_store(values):
    position = Position(values)
    back = decode_position(encode_position(position))
    assert back == position
    assert [type(v) for v in back.values] == [type(v) for v in values]
    assert [getattr(v, "tzinfo", None) for v in back.values] == [getattr(v, "tzinfo", None) for v in values]


def test_an_unreadable_stored_cursor_is_a_clear_error():
    with pytest.raises(CursorError, match="not readable"):
        decode_position('{"v": [{"t": "float", "v": 1}]}')


def test_rows_reach_the_adapter_with_native_types_and_zones():
    malta = ZoneInfo("Europe/Malta")
    plus_one = timezone(timedelta(hours=1))
    row = {"dt_finalized": datetime(2026, 7, 1, 14, 0), "at": datetime(2026, 7, 1, 13, 0, tzinfo=plus_one),
           "birth": date(1990, 5, 6), "amount": Decimal("10.50"), "type": None, "n": 3}
    native = native_row(row, malta, {"type": "deposit", "method": "card"})
    assert native["dt_finalized"] == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)  # 14:00 in Malta (summer, +2)
    assert native["at"] == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert native["birth"] == datetime(1990, 5, 6, tzinfo=UTC)
    assert native["amount"] == Decimal("10.50") and native["n"] == 3
    assert native["type"] == "deposit" and native["method"] == "card"  # defaults fill absent and null columns


def test_scan_hours_on_a_given_clock():
    view = ViewSettings(name="daily", stream="payments", cursor="dt", id=["id"], scan_hours=[2, 3])
    at = datetime(2026, 1, 1, 2, 59, tzinfo=UTC)
    assert view.scanned_at(at)
    assert not view.scanned_at(at + timedelta(hours=2))
    assert view.scanned_at(datetime(2026, 1, 1, 4, 30, tzinfo=ZoneInfo("Europe/Malta")))  # 03:30 UTC


def test_the_cycle_reads_profiles_first_then_payments_casino_sport():
    settings = load_settings(environ={}, source="replica", replica={"dsn": "postgresql://u@h/db", "views": [
        {"name": "bets", "stream": "casino", "cursor": "id", "kind": "id"},
        {"name": "withdrawals", "stream": "payments", "cursor": "dt", "id": "tx"},
        {"name": "users", "stream": "profile", "cursor": "dt_update", "id": ["ext_brand_id", "user_ext_id"]},
        {"name": "deposits", "stream": "payments", "cursor": "dt", "id": "tx"},
    ]})
    assert [v.name for v in settings.replica.cycle()] == ["users", "withdrawals", "deposits", "bets"]


@pytest.mark.parametrize(("replica", "expected"), [
    ({}, "replica.dsn: is required with source: replica"),
    ({"dsn": "oracle://h/db"}, "replica.dsn: no dialect for scheme oracle://"),
    ({"dsn": "postgresql://h/db", "dialect": "mssql"}, "replica.dialect: no replica dialect named 'mssql'"),
    ({"dsn": "postgresql://h/db", "db_timezone": "Mars/Base"}, "replica.db_timezone: 'Mars/Base' is not a known"),
    ({"dsn": "postgresql://h/db", "page_size": 0}, "replica.page_size: Input should be greater than or equal to 1"),
    ({"dsn": "postgresql://h/db", "views": [{"name": "d; drop table x", "stream": "payments", "cursor": "dt",
                                               "id": "tx"}]}, "replica.views.0.name: 'd; drop table x' is not a plain"),
    ({"dsn": "postgresql://h/db", "views": [{"name": "d", "stream": "payments", "cursor": "dt"}]},
     "replica.views.0: view d: id is required with kind timestamp"),
    ({"dsn": "postgresql://h/db", "views": [{"name": "d", "stream": "payments", "cursor": "id", "kind": "id",
                                               "start": "2026-01-01T00:00:00Z"}]},
     "replica.views.0: view d: start is a time, but kind id views"),
    ({"dsn": "postgresql://h/db", "views": [{"name": "d", "stream": "payments", "cursor": "dt", "id": "tx",
                                               "scan_hours": [24]}]}, "replica.views.0.scan_hours: hours are 0 to 23"),
    ({"dsn": "postgresql://h/db", "views": [{"name": "d", "stream": "payments", "cursor": "id", "kind": "id"},
                                              {"name": "d", "stream": "casino", "cursor": "id", "kind": "id"}]},
     "replica.views: view d is configured twice"),
])
def test_bad_settings_name_the_setting(replica, expected):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, source="replica", replica=replica)
    assert expected in str(caught.value)


def test_the_password_comes_from_the_environment_not_the_file():
    settings = load_settings(environ={}, source="replica", replica={"dsn": "mysql://reader@db.example:3306/ops"})
    assert settings.replica.dsn_with_password({"SMARTICO_STREAM_REPLICA_PASSWORD": "s3cr:t@"}) == \
        "mysql://reader:s3cr%3At%40@db.example:3306/ops"
    assert settings.replica.dsn_with_password({}) == "mysql://reader@db.example:3306/ops"
    # The default variable is known to the unknown-variable check.
    load_settings(environ={"SMARTICO_STREAM_REPLICA_PASSWORD": "x"}, source="replica",
                  replica={"dsn": "mysql://reader@db.example/ops"})
