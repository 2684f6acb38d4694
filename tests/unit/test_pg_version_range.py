"""judge_server_version: below the supported range is an error, above it a warning."""

from __future__ import annotations

import pytest

from pgqueue._migrate import SUPPORTED_RANGE, judge_server_version
from pgqueue.errors import SchemaError


@pytest.mark.parametrize("number, shown", [(150000, "15.0"), (160014, "16.14"), (180004, "18.4")])
def test_the_supported_majors_pass_silently(number: int, shown: str) -> None:
    assert judge_server_version(number, shown) is None


@pytest.mark.parametrize("number, shown", [(140023, "14.23"), (130000, "13.0"), (90624, "9.6.24")])
def test_an_older_server_is_refused_naming_the_range(number: int, shown: str) -> None:
    with pytest.raises(SchemaError) as raised:
        judge_server_version(number, shown)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"PostgreSQL {shown} is not supported")
    assert SUPPORTED_RANGE in message and "upgrade the server" in message


def test_a_newer_server_gets_a_warning_naming_the_range() -> None:
    warning = judge_server_version(190001, "19.1")
    assert warning is not None and "\n" not in warning
    assert warning.startswith("PostgreSQL 19.1 is newer") and SUPPORTED_RANGE in warning
