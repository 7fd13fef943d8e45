"""The Lua scripts enforce exactly the domain's transition table (seatres.domain.states)."""

import asyncio
from itertools import product

import pytest

from seatres.domain.errors import DomainError, InvalidTransition, ReservationExpired
from seatres.domain.ids import new_reservation_id
from seatres.domain.models import Caller
from seatres.domain.states import TRANSITIONS, ReservationState, Transition
from seatres.store.redis_store import RedisStore
from tests.conftest import Backend

S = ReservationState
ALICE = Caller("alice")
USER_TRANSITIONS = [Transition.CONFIRM, Transition.CANCEL]


def test_table_shape() -> None:
    assert set(TRANSITIONS) == set(ReservationState)
    assert TRANSITIONS[S.RESERVED] == {S.CONFIRMED, S.CANCELLED, S.EXPIRED}
    for state in (S.CONFIRMED, S.CANCELLED, S.EXPIRED):
        assert state.is_terminal and not TRANSITIONS[state]
    assert {s for s in S if s.is_active} == {S.RESERVED, S.CONFIRMED}
    assert {t.target for t in Transition} == TRANSITIONS[S.RESERVED]


async def _into(store: RedisStore, state: ReservationState) -> str:
    """A fresh reservation of seat A1 in event e, brought into `state`."""
    await store.upsert_event("e", "E", ["A1"])
    rid = new_reservation_id("e")
    hold_ms = 20 if state is S.EXPIRED else 60_000
    await store.reserve("e", rid, "alice", ["A1"], hold_ms)
    if state is S.CONFIRMED:
        await store.transition("e", rid, Transition.CONFIRM, ALICE)
    elif state is S.CANCELLED:
        await store.transition("e", rid, Transition.CANCEL, ALICE)
    elif state is S.EXPIRED:
        await asyncio.sleep(0.03)
        batch = await store.expire_batch("e", 10)
        assert batch.expired_ids == (rid,)
    return rid


@pytest.mark.parametrize(("start", "transition"), list(product(S, USER_TRANSITIONS)))
def test_scripts_follow_the_table(
    backend: Backend, start: ReservationState, transition: Transition
) -> None:
    async def run() -> None:
        redis = backend.make_async()
        store = RedisStore(redis)
        try:
            rid = await _into(store, start)
            outcome: ReservationState | type[DomainError]
            try:
                outcome = (await store.transition("e", rid, transition, ALICE)).reservation.state
            except DomainError as exc:
                outcome = type(exc)
            stored, _ = await store.get_reservation("e", rid)
            assert stored is not None
            if start.can_become(transition.target):
                assert outcome is transition.target
                assert stored.state is transition.target
            elif start is transition.target:
                assert outcome is start  # a repeated transition answers unchanged
                assert stored.state is start
            elif start is S.EXPIRED:
                assert outcome is ReservationExpired
                assert stored.state is start
            else:
                assert outcome is InvalidTransition
                assert stored.state is start
            # the seat is claimed exactly when the reservation is active
            claimed = await redis.hget("seatres:{evt:e}:claims", "A1")
            assert (claimed == rid) == stored.state.is_active
        finally:
            await redis.aclose()

    asyncio.run(run())
