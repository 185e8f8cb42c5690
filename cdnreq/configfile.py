"""Reading the configuration file, and saying precisely what is wrong with it.

The models live in cdnreq.config; this module turns a TOML file into them,
turns pydantic's errors into one line per problem naming `[section].key` and
the value, and writes the effective configuration back (secrets masked) for
`cdnreq check-config`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import tomli_w
from pydantic import BaseModel, ValidationError

from cdnreq.config import Config

_SECRET_NAME = re.compile(r"token|secret|password", re.IGNORECASE)
_MASK = "***"


DEFAULT_CONFIG = Path("/etc/cdnreq/cdnreq.toml")
CONFIG_ENV = "CDNREQ_CONFIG"


def config_path(given: Path | None, environ: Mapping[str, str]) -> tuple[Path, str | None]:
    """The file to read: `given`, else $CDNREQ_CONFIG, else /etc/cdnreq/cdnreq.toml;
    and, when it was not given, where its name came from (for the error)."""
    if given is not None:
        return given, None
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]), f"${CONFIG_ENV}"
    return DEFAULT_CONFIG, f"the default (${CONFIG_ENV} is not set)"


class ConfigError(Exception):
    """The configuration was refused. `str()` is one problem per line."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(part: Any) -> str:
    s = str(part)
    return s if _BARE_KEY.fullmatch(s) else json.dumps(s)


def _where(loc: tuple[Any, ...]) -> str:
    if not loc:
        return "(top level)"
    where = f"[{_key(loc[0])}]"
    for part in loc[1:]:
        where += f".{_key(part)}"
    return where


_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/@:\s'\"]*):[^/@\s'\"]*@")


def _got(value: Any) -> str:
    """The refused value, as an error may show it: a password in a URL is masked."""
    r = _URL_PASSWORD.sub(r"\1:***@", repr(value))
    if len(r) > 80:
        r = r[:77] + "..."
    return f" (got {r})"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose fields the last element of `loc` is looked up in."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _problem(err: Mapping[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if p != "[key]")
    kind = err["type"]
    ctx = err.get("ctx") or {}

    if kind == "extra_forbidden":
        model = _model_at(loc)
        name = str(loc[-1])
        if len(loc) > 1:
            line = f"{_where(loc)}: unknown key"
        elif isinstance(err["input"], dict):
            line = f"{_where(loc)}: unknown section"
        else:
            line = f"{_key(name)}: unknown top-level key (keys belong in a [section])"
        if model is not None:
            close = difflib.get_close_matches(name, list(model.model_fields), n=1)
            if close:
                line += f' (did you mean "{close[0]}"?)'
        return line

    if kind == "missing":
        return f"{_where(loc)}: required" + (" section" if len(loc) == 1 else "")

    if "cdnreq_key" in ctx:
        key = ctx["cdnreq_key"]  # a key of the model, or a path of keys from it
        return f"{_where(loc + (tuple(key) if isinstance(key, (tuple, list)) else (key,)))}: {err['msg']}{_got(ctx['cdnreq_value'])}"

    if kind in ("model_type", "dict_type") or (kind == "model_attributes_type"):
        return f"{_where(loc)}: must be a table{_got(err['input'])}"

    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ").replace("Input should be", "must be")
    msg = msg.replace("String should have at least 1 character", "must not be empty")
    msg = msg.replace("must be a valid string", "must be a string")
    if msg[:1].isupper() and not msg[1:2].isupper():
        msg = msg[0].lower() + msg[1:]
    return f"{_where(loc)}: {msg}{_got(err['input'])}"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a configuration file, or raise ConfigError."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(name, [f"{name}: cannot read configuration file: {reason}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(name, [f"{name}: not valid UTF-8: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [f"{name}: not valid TOML: {exc}"]) from None
    base_dir = os.path.dirname(os.path.abspath(name))
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [f"{name}: {_problem(err)}" for err in exc.errors()]
        raise ConfigError(name, problems) from None


# --------------------------------------------------------------------------
# output


def _mask_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if password is None or not parts.scheme:
        return value
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:{_MASK}@{hostport}").geturl()


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (_MASK if _SECRET_NAME.search(k) and not k.endswith("_file") else _mask(v))
            for k, v in value.items()
            if v is not None
        }
    if isinstance(value, list):
        return [_mask(v) for v in value if v is not None]
    if isinstance(value, str):
        return _mask_url(value)
    return value


def effective_toml(config: Config) -> str:
    """The effective configuration (defaults filled in, None omitted) as TOML,
    with URL passwords and secret-named fields masked."""
    data = _mask(config.model_dump(mode="json", exclude_none=True))
    header = "# cdnreq effective configuration (defaults filled in, secrets masked)\n"
    return header + tomli_w.dumps(data)


