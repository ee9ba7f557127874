"""
Settings: read from a source, validated against C{configspec.ini}, frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from configobj.validate import ValidateError, Validator
from zope.interface import implementer

from fmq.interfaces import ISettingsSource

CONFIGSPEC = Path(__file__).with_name("configspec.ini")


class SettingsError(Exception):
    """
    The settings cannot be used; the message is one line naming source and key.
    """


@attrs.frozen
class HttpSettings:
    """
    The listener callers talk to.
    """

    interface: str
    port: int
    request_timeout: float
    backlog: int
    max_waiting: int
    max_body: int
    access_log: bool
    drain_timeout: float


@attrs.frozen
class BrokerSettings:
    """
    Which broker, and how the file broker watches its directory.
    """

    type: str
    directory: Path
    request_format: str
    watch: str
    poll_interval: float
    rescan_interval: float
    request_ttl: float
    settle_time: float
    check_interval: float
    delete_retry_max: float
    max_answer_bytes: int


@attrs.frozen
class ServiceSettings:
    """
    How callers are mapped to broker requests.
    """

    mode: str
    collapse_key: str


@attrs.frozen
class LoggingSettings:
    """
    What the log shows, and how.
    """

    level: str
    format: str


@attrs.frozen
class AdminSettings:
    """
    The operator's listener: status page, health and metrics.
    """

    interface: str
    port: int
    show_query: bool


@attrs.frozen
class AmqpSettings:
    """
    The AMQP broker's connection and queue.
    """

    url: str
    request_queue: str
    connect_timeout: float
    reconnect_max: float


@attrs.frozen
class FleetSettings:
    """
    Collapsing across instances (see L{fmq.fleet}); off with no registry.
    """

    registry: str
    lease: float


@attrs.frozen
class Settings:
    """
    Everything the service needs to start, validated.
    """

    http: HttpSettings
    broker: BrokerSettings
    service: ServiceSettings
    logging: LoggingSettings
    admin: AdminSettings
    amqp: AmqpSettings
    fleet: FleetSettings
    source: str = "defaults"

    def effective(self) -> dict[str, dict[str, Any]]:
        """
        Every effective setting by section, passwords masked: what the log
        and the status page show. C{[amqp]} only with the AMQP broker.
        """
        sections = {}
        for section in _SECTIONS:
            if section == "amqp" and self.broker.type != "amqp":
                continue
            values = attrs.asdict(getattr(self, section), recurse=False)
            if section == "amqp":
                values["url"] = mask_password(values["url"])
            if section == "fleet":
                values["registry"] = mask_password(values["registry"])
            sections[section] = values
        return sections

    def summary(self) -> str:
        """
        Every effective setting on one line, for the start-up log.
        """
        return " ".join(
            f"[{section}] " + " ".join(f"{k}={v}" for k, v in values.items())
            for section, values in self.effective().items()
        )


def mask_password(url: str) -> str:
    """
    C{url} with the password of its user part, if any, replaced by C{***}.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@implementer(ISettingsSource)
@attrs.frozen
class IniFile:
    """
    Settings from an ini file; relative paths are relative to its folder.
    """

    path: Path

    @property
    def name(self) -> str:
        return str(self.path)

    def load(self) -> Mapping[str, Any]:
        try:
            return ConfigObj(str(self.path), file_error=True, interpolation=False)
        except OSError as e:
            raise SettingsError(f"{self.path}: cannot read the file: {e.strerror or e}") from None
        except ConfigObjError as e:
            errors = getattr(e, "errors", None) or [e]
            raise SettingsError(f"{self.path}: cannot parse the file: {errors[0]}") from None
        except UnicodeDecodeError as e:
            raise SettingsError(
                f"{self.path}: cannot read the file: not UTF-8 ({e.reason} at byte {e.start})"
            ) from None

    def base_directory(self) -> Path:
        return self.path.resolve().parent


@implementer(ISettingsSource)
@attrs.frozen
class DictSource:
    """
    Settings from a mapping of section to mapping of key to value.
    """

    values: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    name: str = "settings"
    base: Path = attrs.field(factory=Path.cwd)

    def load(self) -> Mapping[str, Any]:
        return self.values

    def base_directory(self) -> Path:
        return self.base


_SECTIONS = {
    "http": HttpSettings,
    "broker": BrokerSettings,
    "service": ServiceSettings,
    "logging": LoggingSettings,
    "admin": AdminSettings,
    "amqp": AmqpSettings,
    "fleet": FleetSettings,
}


def load_settings(
    source: ISettingsSource,
    overrides: Mapping[tuple[str, str], Any] = {},
) -> Settings:
    """
    Read, check and freeze the settings of C{source}.

    @param overrides: values that win over the source's, by (section, key),
        e.g. from the command line; they are validated like the rest.
    @raise SettingsError: a missing file, an unknown section or key, or a
        value of the wrong type; the message names the source and the key.
    """
    raw = source.load()
    config = ConfigObj(configspec=str(CONFIGSPEC), interpolation=False)
    for section, keys in raw.items():
        if not isinstance(keys, Mapping):
            raise SettingsError(f"{source.name}: {section!r} is outside any [section]")
        config[section] = dict(keys)
    for (section, key), value in overrides.items():
        config.setdefault(section, {})[key] = value

    results = config.validate(Validator(), preserve_errors=True)
    if results is not True:
        for sections, key, error in flatten_errors(config, results):
            where = _where(sections, key)
            if error is False:
                raise SettingsError(f"{source.name}: {where} is missing")
            detail = str(error).rstrip(".") if isinstance(error, ValidateError) else "invalid"
            spec = _spec(sections, key)
            raise SettingsError(f"{source.name}: {where}: {detail} (expected {spec})")
    for sections, name in get_extra_values(config):
        if sections:
            raise SettingsError(f"{source.name}: {_where(sections, name)} is not a known key")
        raise SettingsError(f"{source.name}: [{name}] is not a known section")

    values = {section: dict(config[section]) for section in _SECTIONS}
    directory = Path(values["broker"]["directory"]).expanduser()
    if not directory.is_absolute():
        directory = source.base_directory() / directory
    values["broker"]["directory"] = Path(directory)
    return Settings(
        source=source.name,
        **{section: cls(**values[section]) for section, cls in _SECTIONS.items()},
    )


def _spec(sections: list[str], key: str | None) -> str:
    spec: Any = ConfigObj(str(CONFIGSPEC), list_values=False, _inspec=True)
    for section in sections:
        spec = spec[section]
    return str(spec[key]) if key is not None else "a section"


def _where(sections: list[str], key: str | None) -> str:
    path = "".join(f"[{s}]" for s in sections)
    return f"{path} {key}" if key is not None else path
