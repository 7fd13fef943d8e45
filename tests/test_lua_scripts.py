"""Every script is shipped as package data and opens with its contract."""

import re
from importlib import resources

import pytest

from seatres.store import scripts
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


@pytest.mark.parametrize("name", scripts.SCRIPT_NAMES)
def test_header_lists_keys_argv_and_returns(name: str) -> None:
    text = resources.files("seatres.lua").joinpath(f"{name}.lua").read_text()
    header = text.split("\n\n")[0] + text
    assert text.startswith(f"-- {name}.lua:")
    assert "KEYS[1]" in header
    assert "Returns" in header
    used_keys = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", text)}
    documented = {int(n) for n in re.findall(r"^-- KEYS\[(\d+)\]", text, re.M)}
    assert used_keys == documented, "every key the script uses is documented, and only those"
    used_argv = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", text)}
    documented_argv = {int(n) for n in re.findall(r"^-- ARGV\[(\d+)\]", text, re.M)}
    assert used_argv <= documented_argv


def test_scripts_never_build_keys() -> None:
    """Keys come in KEYS only, so Redis Cluster can route every call (no '..' on a key)."""
    for name in scripts.SCRIPT_NAMES:
        text = scripts.script(name).source
        for call in re.findall(r"redis\.call\('(\w+)', ([^,)]+)", text):
            command, first_arg = call
            if command in {"TIME"}:
                continue
            assert ".." not in first_arg, (name, call)


def test_codes_returned_by_scripts_are_all_mapped() -> None:
    returned: set[int] = set()
    for name in scripts.SCRIPT_NAMES:
        text = resources.files("seatres.lua").joinpath(f"{name}.lua").read_text()
        returned |= {int(n) for n in re.findall(r"return \{(-?\d+)[,}]", text)}
    assert returned - {0} <= CODES
