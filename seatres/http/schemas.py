"""Request bodies. Unknown fields and wrong types are refused (400 validation_error);
the rules about what an id may look like live in the domain."""

from typing import Annotated, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from seatres.domain.service import MAX_SEATS_PER_EVENT

# Bounds here only keep absurd input cheap to refuse; the domain applies the real rules.
TEXT_MAX_LENGTH = 256
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX_LENGTH)]


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


def _whole_number(value: object) -> object:
    """60.0 is the JSON number 60 (and an "integer" to JSON Schema): taken as 60. 1.5,
    NaN, infinities and non-numbers stay as they are, for the strict check to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ExtendBody(Body):
    seconds: Annotated[int, BeforeValidator(_whole_number)]
