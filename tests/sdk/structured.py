"""The pydantic models the SDK scripts parse structured outputs into: both
SDKs turn them into a JSON schema, and the mocks answer with JSON that
follows it (`livery::providers::mock::example_of`)."""

from pydantic import BaseModel


class Pet(BaseModel):
    kind: str


class Person(BaseModel):
    name: str
    age: int
    pets: list[Pet]
