"""Request bodies. Unknown fields and wrong types are refused (400 validation_error);
the rules about what an id may look like live in the domain."""

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from seatres.domain.service import MAX_SEATS_PER_EVENT

# Bounds here only keep absurd input cheap to refuse; the domain applies the real rules.
Text = Annotated[str, StringConstraints(max_length=256)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class EventBody(Body):
    name: Text
    seats: Annotated[list[Text], Field(max_length=MAX_SEATS_PER_EVENT)]


class ReserveBody(Body):
    eventId: Text
    seatId: Text | None = None
    seatIds: Annotated[list[Text], Field(max_length=1000)] | None = None

    @model_validator(mode="after")
    def _one_way_to_name_seats(self) -> Self:
        if (self.seatId is None) == (self.seatIds is None):
            raise ValueError("give either seatId or seatIds, not both and not neither")
        return self

    @property
    def seats(self) -> list[str]:
        return [self.seatId] if self.seatId is not None else list(self.seatIds or [])


class ExtendBody(Body):
    seconds: int
