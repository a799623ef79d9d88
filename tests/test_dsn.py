"""DSNs are validated, normalised, resolved in the documented order and always redacted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolwarden._dsn import normalize_dsn, redact_dsn, resolve_dsn
from poolwarden.errors import DsnError


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgres://:secret@h/db", "postgres://:***@h/db"),
        ("postgresql+psycopg://u:secret@h/db", "postgresql+psycopg://u:***@h/db"),
        (
            "postgresql://u@h/db?password=secret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("host=h user=u password=secret dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password='sec ret' dbname=d", "host=h password=*** dbname=d"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_redact_dsn_hides_the_password_in_every_form(dsn: str, expected: str) -> None:
    """URL userinfo, URL query and key=value passwords all become ***; the rest is kept."""
    assert redact_dsn(dsn) == expected


@given(
    st.text(
        alphabet=st.characters(
            blacklist_characters="@/?#&' \\", min_codepoint=33, max_codepoint=126
        ),
        min_size=4,
    )
)
def test_redacted_url_never_contains_the_password(password: str) -> None:
    """Whatever the password's characters, the redacted URL does not contain it."""
    dsn = f"postgresql://app:{password}@db.internal:5432/orders"
    assert f":{password}@" not in redact_dsn(dsn)
    assert redact_dsn(dsn).endswith("@db.internal:5432/orders")


def test_normalize_strips_the_sqlalchemy_driver() -> None:
    """postgresql+psycopg:// and postgresql+asyncpg:// URLs become plain libpq URLs."""
    assert normalize_dsn("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    assert normalize_dsn("postgresql+asyncpg://u@h/db") == "postgresql://u@h/db"


def test_normalize_rejects_bad_syntax_with_one_redacted_line() -> None:
    """A DSN libpq cannot parse raises DsnError naming its origin, without the password."""
    with pytest.raises(DsnError) as err:
        normalize_dsn("host=h password=hunter2 dbname", origin="--dsn")
    message = str(err.value)
    assert message.startswith("--dsn: cannot parse DSN")
    assert "hunter2" not in message
    assert "\n" not in message
    with pytest.raises(DsnError, match="empty"):
        normalize_dsn("   ")


def test_resolve_prefers_flag_then_poolwarden_dsn_then_database_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--dsn beats POOLWARDEN_DSN beats DATABASE_URL; with none, the embedded server serves."""
    monkeypatch.delenv("POOLWARDEN_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert resolve_dsn(None).source == "embedded"
    assert resolve_dsn(None).dsn is None
    monkeypatch.setenv("DATABASE_URL", "postgresql://c@h/db")
    assert resolve_dsn(None).dsn == "postgresql://c@h/db"
    monkeypatch.setenv("POOLWARDEN_DSN", "postgresql://b@h/db")
    assert resolve_dsn(None).source == "POOLWARDEN_DSN"
    flag = resolve_dsn("postgresql://a@h/db")
    assert (flag.dsn, flag.source) == ("postgresql://a@h/db", "--dsn")


def test_resolve_names_the_environment_variable_that_is_wrong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A malformed DATABASE_URL is reported as DATABASE_URL, not as a generic DSN."""
    monkeypatch.delenv("POOLWARDEN_DSN", raising=False)
    monkeypatch.setenv("DATABASE_URL", "host=h oops")
    with pytest.raises(DsnError, match=r"^DATABASE_URL: "):
        resolve_dsn(None)


@pytest.mark.parametrize("dsn", ["postgresql://u:x%zz@h/db", "postgresql://u:pw-leak@[::1"])
def test_parse_errors_never_quote_the_password(dsn: str) -> None:
    """libpq quotes the offending token; when that token is the password it is masked."""
    with pytest.raises(DsnError) as err:
        normalize_dsn(dsn)
    assert "x%zz" not in str(err.value)
    assert "pw-leak" not in str(err.value)
