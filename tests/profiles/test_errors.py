"""profiles.errors: the one-line messages every user-facing error is built from."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from profiles.errors import validation_message


class _Box(BaseModel):
    name: str
    size: int = Field(gt=0)
    inner: dict[str, int] = {}


def _error(**kw) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        _Box(**kw)
    return e.value


def test_names_the_field_what_is_wrong_and_the_value():
    assert validation_message(_error(name="a", size=0)) == "size: Input should be greater than 0 (got 0)"
    # nested locations are dotted; more errors are counted, never listed
    assert validation_message(_error(name="a", size=1, inner={"k": "x"})).startswith("inner.k: Input should be")
    assert validation_message(_error(size=-1)).endswith("(and 1 more)")


def test_a_long_or_structured_value_is_not_echoed():
    msg = validation_message(_error(name="a", size="x" * 100))
    assert msg.startswith("size: Input should be a valid integer") and "got" not in msg
    assert "got" not in validation_message(_error(name="a", size=[1]))


def test_not_pydantic_gives_its_first_line():
    assert validation_message(ValueError("first\nsecond")) == "first"
    assert validation_message(ValueError("")) == "ValueError"
