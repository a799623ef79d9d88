"""The model of ``poolwarden.yaml`` and `load_config`, which reads it.

`load_config` turns every problem with the file into one `ConfigError` line that names the
file, the field (``databases.main.dsn``, ``targets[1].url``) and the fix. DSNs may hold
``${ENV_VAR}`` references, expanded at load time so passwords can stay out of the file;
no message ever quotes a DSN or a URL, so none can leak a password. The format is
described field by field in ``docs/config.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import psycopg
import yaml
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from poolwarden._config_errors import (
    INVALID_DSN,
    DuplicateKeyError,
    describe_value,
    did_you_mean,
    invalid,
    translate_validation_error,
    translate_yaml_error,
)
from poolwarden._dsn import redact_dsn
from poolwarden.errors import ConfigError

__all__ = [
    "Config",
    "DatabaseConfig",
    "NotifyConfig",
    "PgBouncerAdminConfig",
    "TargetConfig",
    "WatchConfig",
    "WebhookConfig",
    "load_config",
]

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


def _null_as_empty(value: object) -> object:
    # `targets:` with nothing under it is a common way to write "none yet" in YAML.
    return {} if value is None else value


def _null_as_empty_list(value: object) -> object:
    return [] if value is None else value


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Labels = Annotated[dict[str, str], BeforeValidator(_null_as_empty)]


class _Frozen(BaseModel):
    # hide_input_in_errors: a ValidationError from building these in code must not print a
    # DSN (and its password) either.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class DatabaseConfig(_Frozen):
    """A PostgreSQL database: its DSN (URL or key=value form) and labels for its metrics."""

    dsn: str
    labels: Labels = Field(default_factory=dict)

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, dsn: str) -> str:
        problem = _dsn_problem(dsn)
        if problem:
            raise invalid(problem, kind=INVALID_DSN)
        return dsn


class TargetConfig(_Frozen):
    """An application's Prometheus ``/metrics`` endpoint, optionally tied to a database."""

    name: Name
    url: str
    database: str | None = None
    labels: Labels = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        problem = _url_problem(url)
        if problem:
            raise invalid(problem)
        return url


class PgBouncerAdminConfig(_Frozen):
    """A PgBouncer's admin console: a DSN with ``dbname=pgbouncer`` (URL or key=value form)."""

    dsn: str

    @field_validator("dsn")
    @classmethod
    def _check_dsn(cls, dsn: str) -> str:
        problem = _dsn_problem(dsn)
        if problem:
            raise invalid(problem, kind=INVALID_DSN)
        return dsn


class WatchConfig(_Frozen):
    """How `poolwarden watch` runs: tick interval, incident store, per-probe deadline."""

    interval: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    store: str | None = None  # a SQLAlchemy URL; None: the user's data dir (SQLite)
    probe_timeout: float = Field(default=2.0, gt=0, allow_inf_nan=False)


class WebhookConfig(_Frozen):
    """An Alertmanager-compatible webhook receiver; `hmac_secret` may hold ``${ENV}``."""

    url: str
    hmac_secret: str | None = None
    timeout: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    retries: int = Field(default=3, ge=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        problem = _url_problem(url)
        if problem:
            raise invalid(problem.replace(_URL_EXAMPLE, _WEBHOOK_EXAMPLE))
        return url


class NotifyConfig(_Frozen):
    """Where alerts go: the console (on by default) and any webhooks."""

    webhooks: Annotated[list[WebhookConfig], BeforeValidator(_null_as_empty_list)] = Field(
        default_factory=list
    )
    console: bool = True


class Config(_Frozen):
    """The whole of ``poolwarden.yaml``: databases, PgBouncers, targets and how to watch them.

    `rules` are overrides and additions passed to `poolwarden.watch.rules.load_rules`.
    """

    databases: Annotated[dict[Name, DatabaseConfig], BeforeValidator(_null_as_empty)] = Field(
        default_factory=dict
    )
    targets: Annotated[list[TargetConfig], BeforeValidator(_null_as_empty_list)] = Field(
        default_factory=list
    )
    pgbouncers: Annotated[dict[Name, PgBouncerAdminConfig], BeforeValidator(_null_as_empty)] = (
        Field(default_factory=dict)
    )
    watch: Annotated[WatchConfig, BeforeValidator(_null_as_empty)] = Field(
        default_factory=WatchConfig
    )
    notify: Annotated[NotifyConfig, BeforeValidator(_null_as_empty)] = Field(
        default_factory=NotifyConfig
    )
    rules: Annotated[list[dict[str, Any]], BeforeValidator(_null_as_empty_list)] = Field(
        default_factory=list
    )

    @model_validator(mode="after")
    def _check_targets(self) -> Config:
        first_index: dict[str, int] = {}
        for index, target in enumerate(self.targets):
            if target.name in first_index:
                raise invalid(
                    f"duplicate target name {target.name!r}, also used by "
                    f"targets[{first_index[target.name]}]; give each target a unique name",
                    path=f"targets[{index}].name",
                )
            first_index[target.name] = index
            if target.database is not None and target.database not in self.databases:
                raise invalid(
                    _unknown_database(target.database, list(self.databases)),
                    path=f"targets[{index}].database",
                )
        return self


def _unknown_database(name: str, known: list[str]) -> str:
    if not known:
        return f"unknown database {name!r}: no databases are defined; add it under databases"
    return f"unknown database {name!r}; {did_you_mean(name, known)}use one of {', '.join(known)}"


# --- field checks: each returns "problem; fix" or None -------------------------------------

_DRIVER_SUFFIX = re.compile(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://", re.IGNORECASE)
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_QUOTED = re.compile(r'"([^"]*)"')
_DSN_EXAMPLE = "write it like 'postgresql://app@db:5432/app' or 'host=db dbname=app'"
_URL_EXAMPLE = "write the app's metrics endpoint, like 'http://orders-api:8000/metrics'"
_WEBHOOK_EXAMPLE = "write the receiver's endpoint, like 'http://alerts.internal:9000/hook'"


def _dsn_problem(dsn: str) -> str | None:
    """Say what is wrong with `dsn`'s syntax, without quoting any part of a password."""
    text = _DRIVER_SUFFIX.sub(r"\1://", dsn.strip())
    if not text:
        return f"the DSN is empty; {_DSN_EXAMPLE}"
    scheme = _URL_SCHEME.match(text)
    if scheme and scheme[1].lower() not in ("postgres", "postgresql"):
        return f"scheme {scheme[1] + '://'!r} is not PostgreSQL; {_DSN_EXAMPLE}"
    try:
        conninfo_to_dict(text)
    except psycopg.ProgrammingError as exc:
        return f"not a valid PostgreSQL DSN ({_safe_reason(text, str(exc))}); {_DSN_EXAMPLE}"
    return None


def _safe_reason(dsn: str, reason: str) -> str:
    """Return libpq's parse error with every quoted token a password could be in masked."""
    lines = reason.strip().splitlines()
    # libpq quotes the offending token, which may be (part of) a password or the whole URL;
    # keep a token only when the redacted DSN shows it anyway. A '"' in the DSN would make
    # the tokens ambiguous, so then say nothing specific.
    if not lines or '"' in dsn:
        return "syntax error"
    visible = redact_dsn(dsn)

    def mask(match: re.Match[str]) -> str:
        token = match[1]
        return match[0] if token in ("=", "]") or token in visible else '"***"'

    return _QUOTED.sub(mask, lines[0])


def _url_problem(url: str) -> str | None:
    """Say what keeps `url` from being an http(s) endpoint; the URL is not quoted back."""
    text = url.strip()
    if "://" not in text:
        return f"not a URL: it has no http:// or https://; {_URL_EXAMPLE}"
    try:
        parts = urlsplit(text)
    except ValueError:
        return f"not a valid URL; {_URL_EXAMPLE}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme + '://'!r} is not http:// or https://; {_URL_EXAMPLE}"
    if not parts.hostname:
        return f"the URL has no host; {_URL_EXAMPLE}"
    try:
        parts.port  # noqa: B018 - the property validates the port
    except ValueError:
        return f"the port is not a number from 0 to 65535; {_URL_EXAMPLE}"
    return None


# --- loading ------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, expand and validate the YAML file at `path`.

    An empty file is an empty config. Every problem raises `ConfigError` (`DsnError` for a
    DSN that cannot be parsed) with one line naming the file, the field and the fix.
    """
    where = os.fspath(path)
    data = _parse_yaml(where, _read(where))
    if data is None:
        return Config()
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: the top level is {describe_value(data)}; write a mapping with the keys "
            f"{', '.join(Config.model_fields)}"
        )
    _expand_dsns(where, data, os.environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        # `from None`: the one-line message replaces pydantic's report; chaining adds only noise.
        raise translate_validation_error(where, exc, data, Config) from None


def _read(where: str) -> str:
    """Return the file's text or raise `ConfigError` saying why it cannot be read."""
    try:
        # utf-8-sig: editors on Windows like to start the file with a byte-order mark.
        return Path(where).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        fix = "pass -c PATH or create one (see docs/config.md)"
        raise ConfigError(f"{where}: no such file; {fix}") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory; pass the YAML file with -c PATH") from None
    except PermissionError:
        fix = "make it readable by this user or pass another file with -c PATH"
        raise ConfigError(f"{where}: cannot read it (permission denied); {fix}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{where}: cannot read it ({reason}); check the path") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save the file as UTF-8"
        ) from None


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys instead of dropping all but the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            # '<<' merges are meant to be overridden, and only scalar keys can repeat sensibly.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].line + 1
                raise DuplicateKeyError(
                    problem=f"duplicate key {key!r} (first at line {first})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(where: str, text: str) -> object:
    """Parse `text` as one YAML document; syntax errors name the line and column."""
    try:
        return _load_single(text)
    except (yaml.MarkedYAMLError, yaml.reader.ReaderError) as exc:
        raise translate_yaml_error(where, exc, text) from None


def _load_single(text: str) -> object:
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_ENV_REF = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _expand_dsns(where: str, data: dict[Any, Any], environ: Mapping[str, str]) -> None:
    """Expand ``${NAME}`` in the secrets of the parsed file, in place.

    That is each ``databases.*.dsn``, ``pgbouncers.*.dsn`` and
    ``notify.webhooks[].hmac_secret``. Anything of the wrong shape is left for validation.
    """
    for section in ("databases", "pgbouncers"):
        entries = data.get(section)
        if isinstance(entries, dict):
            for name, entry in entries.items():
                _expand_key(where, entry, "dsn", f"{section}.{name}.dsn", environ)
    notify = data.get("notify")
    hooks = notify.get("webhooks") if isinstance(notify, dict) else None
    if isinstance(hooks, list):
        for index, hook in enumerate(hooks):
            path = f"notify.webhooks[{index}].hmac_secret"
            _expand_key(where, hook, "hmac_secret", path, environ)


def _expand_key(where: str, entry: object, key: str, path: str, environ: Mapping[str, str]) -> None:
    if isinstance(entry, dict) and isinstance(entry.get(key), str):
        try:
            entry[key] = _expand_env(entry[key], environ)
        except ValueError as exc:
            raise ConfigError(f"{where}: {path}: {exc}") from None


def _expand_env(value: str, environ: Mapping[str, str]) -> str:
    """Replace each ``${NAME}`` in `value`; raise ValueError with "problem; fix" otherwise."""

    def substitute(match: re.Match[str]) -> str:
        # The reference's own text is not quoted back: it could be part of a password.
        name = match[1]
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(
                "a ${...} reference is not a variable name; write ${NAME} with letters, "
                "digits and '_', or move a value containing '${' into an environment variable"
            )
        if name not in environ:
            raise ValueError(
                f"environment variable {name} is not set; export it before running "
                "poolwarden, or write the value in the file"
            )
        return environ[name]

    if "${" in _ENV_REF.sub("", value):
        raise ValueError("'${' without a closing '}'; write ${NAME}")
    return _ENV_REF.sub(substitute, value)
