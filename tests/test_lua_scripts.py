"""Every script is shipped as package data and opens with its contract."""

import re
from importlib import resources

import pytest

from seatres.store import keys, scripts
from seatres.store.redis_store import (
    CREATED,
    EVENT_NOT_FOUND,
    EXPIRED,
    INVALID_TRANSITION,
    NOT_OWNER,
    SEATS_TAKEN,
    UNCHANGED,
    UNKNOWN_SEATS,
)

CODES = {
    CREATED,
    UNCHANGED,
    EVENT_NOT_FOUND,
    UNKNOWN_SEATS,
    SEATS_TAKEN,
    INVALID_TRANSITION,
    EXPIRED,
    NOT_OWNER,
}


def _header_and_body(name: str) -> tuple[str, str]:
    text = resources.files("seatres.lua").joinpath(f"{name}.lua").read_text()
    lines = text.splitlines()
    n = next(i for i, line in enumerate(lines) if line and not line.startswith("--"))
    return "\n".join(lines[:n]), "\n".join(lines[n:])


@pytest.mark.parametrize("name", scripts.SCRIPT_NAMES)
def test_header_lists_keys_argv_and_returns(name: str) -> None:
    header, body = _header_and_body(name)
    assert header.startswith(f"-- {name}.lua:")
    assert "-- KEYS[1" in header
    assert "-- Returns" in header
    documented_keys = {
        n
        for first, last in re.findall(r"^-- KEYS\[(\d+)(?:\.\.(\d+))?\]", header, re.M)
        for n in range(int(first), int(last or first) + 1)
    }
    assert {int(n) for n in re.findall(r"KEYS\[(\d+)\]", body)} <= documented_keys
    if "event_keys()" in body:
        assert "-- KEYS[1..7] the event's keys" in header
    documented_argv = {int(n) for n in re.findall(r"^-- ARGV\[(\d+)\]", header, re.M)}
    assert {int(n) for n in re.findall(r"ARGV\[(\d+)\]", body)} <= documented_argv


def test_common_key_order_matches_the_key_schema() -> None:
    from seatres.store.keys import EventKeys

    common = resources.files("seatres.lua").joinpath("common.lua").read_text()
    order = re.findall(r"^    (\w+) = KEYS\[(\d+)\]", common, re.M)
    assert [name for name, _ in order][: len(EventKeys._fields)] == list(EventKeys._fields)
    assert [int(i) for _, i in order] == list(range(1, len(order) + 1))


def test_scripts_build_no_key_but_a_seats_claim_key() -> None:
    """Keys come in KEYS, so Redis Cluster can route every call; the one exception, a
    seat's claim key, is made from the meta key (KEYS[1]) and so shares its hash slot."""
    built = set()
    for name in scripts.SCRIPT_NAMES:
        text = scripts.script(name).source
        for command, first_arg in re.findall(r"redis\.p?call\('(\w+)', ([^,)]+)", text):
            if command != "TIME" and (".." in first_arg or "(" in first_arg):
                built.add(first_arg)
    # unpack(names: claim_keys_moved's list of claim_key(K, seat)
    assert built == {"prefix .. ARGV[i]", "claim_key(K", "unpack(names"}
    reserve = scripts.script("reserve").source
    assert "local prefix = string.sub(KEYS[1], 1, -5) .. 'claim:'" in reserve
    assert "claim_prefix = string.sub(KEYS[1], 1, -5) .. 'claim:'" in reserve
    assert keys.event_keys("e").meta[: -len("meta")] + "claim:A1" == keys.claim_key("e", "A1")


def test_codes_returned_by_scripts_are_all_mapped() -> None:
    returned: set[int] = set()
    for name in scripts.SCRIPT_NAMES:
        text = resources.files("seatres.lua").joinpath(f"{name}.lua").read_text()
        returned |= {int(n) for n in re.findall(r"return \{?(-?\d+)[,}\n]", text)}
    assert returned - {0} <= CODES
