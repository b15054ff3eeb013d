"""Hypothesis strategies for every Loket model (tests only; needs ``hypothesis``).

``models(cls)`` builds valid instances of any pydantic model in this package from its
field annotations and constraints (lengths, patterns, bounds, enums, unions, the BSN
eleven-test), so services can property-test their handlers::

    from hypothesis import given
    from loket_schemas.testing import models
    from loket_schemas.events import QuestionReceived

    @given(models(QuestionReceived))
    def test_handler(question: QuestionReceived) -> None: ...

``messages()`` draws any event or command of :data:`loket_schemas.events.MESSAGE_TYPES`.
"""

from __future__ import annotations

import re
import types
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from functools import cache
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
from hypothesis import strategies as st
from pydantic import AfterValidator, AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

from loket_schemas import vocabulary
from loket_schemas.events import MESSAGE_TYPES, Message

M = TypeVar("M", bound=BaseModel)

_OFFSETS = (
    UTC,
    timezone(timedelta(hours=1)),
    timezone(timedelta(hours=2)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=5, minutes=30)),
)


def aware_datetimes() -> st.SearchStrategy[datetime]:
    """Timezone-aware datetimes (whole-minute offsets, years 1971-2100)."""
    return st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from(_OFFSETS),
    )


def _bsn_from(head: int) -> str:
    digits = f"{head:08d}"
    check = sum(int(d) * w for d, w in zip(digits, range(9, 1, -1), strict=True)) % 11
    return digits + str(check) if check <= 9 else ""


def bsns() -> st.SearchStrategy[str]:
    """Valid BSNs (pass the eleven-test)."""
    return st.integers(1, 99_999_999).map(_bsn_from).filter(vocabulary.bsn_is_valid)


def kvk_numbers() -> st.SearchStrategy[str]:
    """Valid KvK numbers (8 digits)."""
    return st.from_regex(re.compile(r"[0-9]{8}"), fullmatch=True)


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.MinLen):
            out["min_length"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            out["max_length"] = item.max_length
        elif isinstance(item, annotated_types.Ge):
            out["ge"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            out["gt"] = item.gt
        elif isinstance(item, annotated_types.Le):
            out["le"] = item.le
        elif isinstance(item, AfterValidator):
            out["validator"] = getattr(item.func, "__name__", "")
        elif getattr(item, "pattern", None) is not None:
            out["pattern"] = item.pattern
        elif isinstance(item, FieldInfo):
            out |= _constraints(item.metadata)
    return out


def _text(c: dict[str, Any]) -> st.SearchStrategy[str]:
    if c.get("validator") == "_check_bsn":
        return bsns()
    if c.get("validator") == "_check_kvk":
        return kvk_numbers()
    low = c.get("min_length", 0)
    high = c.get("max_length")
    if "pattern" in c:
        strategy = st.from_regex(re.compile(c["pattern"]), fullmatch=True)
        return strategy.filter(lambda s: low <= len(s) and (high is None or len(s) <= high))
    return st.text(min_size=low, max_size=min(high if high is not None else 60, 60))


def _for(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return _for(base, [*metadata, *extra])
    if origin in (Union, types.UnionType):
        return st.one_of(*(_for(arg, metadata) for arg in get_args(annotation)))
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    c = _constraints(metadata)
    if origin is list:
        (item,) = get_args(annotation)
        return st.lists(_for(item, []), min_size=c.get("min_length", 0), max_size=4)
    if origin is dict:
        key, value = get_args(annotation)
        return st.dictionaries(_for(key, []), _for(value, []), max_size=4)
    if annotation is type(None):
        return st.none()
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return models(annotation)
        if issubclass(annotation, Enum):
            return st.sampled_from(list(annotation))
        if issubclass(annotation, bool):
            return st.booleans()
        if issubclass(annotation, int):
            low = c.get("ge", c["gt"] + 1 if "gt" in c else -(2**31))
            return st.integers(min_value=low, max_value=c.get("le", 2**53))
        if issubclass(annotation, float):
            return st.floats(
                min_value=c.get("ge", c.get("gt", -1e9)),
                max_value=c.get("le", 1e9),
                exclude_min="gt" in c,
                allow_nan=False,
                allow_infinity=False,
            )
        if issubclass(annotation, str):
            return _text(c)
        if issubclass(annotation, datetime):
            return aware_datetimes()
    if annotation is AwareDatetime:
        return aware_datetimes()
    raise NotImplementedError(f"no strategy for {annotation!r}")


@cache
def _models(cls: type[BaseModel]) -> st.SearchStrategy[Any]:
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in cls.model_fields.items():
        strategy = _for(info.annotation, list(info.metadata))
        (required if info.is_required() else optional)[name] = strategy
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


def models(cls: type[M]) -> st.SearchStrategy[M]:
    """Valid instances of a pydantic model of this package."""
    return _models(cls)


def messages() -> st.SearchStrategy[Message]:
    """Any event or command of :data:`loket_schemas.events.MESSAGE_TYPES`."""
    return st.one_of(*(models(cls) for cls in MESSAGE_TYPES))
