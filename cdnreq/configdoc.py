"""The example configuration and the configuration reference, from the models.

`examples/cdnreq.toml` and `docs/config-spec.md` are generated here from the
pydantic models in cdnreq.config (their descriptions, defaults, types and
bounds), so that neither can miss a key or drift from what is accepted; a
test compares the committed files with this output. In the example every
optional key is commented out at its default (or at an example value when it
has none), and the required ones are set to example values: uncommented as
it is, it is the minimal valid file; uncommenting every key gives a full one.

`python -m cdnreq.configdoc --write` regenerates them (and the JSON Schema);
`--example`, `--markdown`, `--schema` print one. The command lives here, not
in cdnreq.config, so that the models never import their documentation.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cdnreq.config import Config, config_json_schema

EXAMPLE_PATH = "examples/cdnreq.toml"
SPEC_PATH = "docs/config-spec.md"
SCHEMA_PATH = "schemas/config.schema.json"
GENERATOR = "python -m cdnreq.configdoc --write"


@dataclass(frozen=True)
class Key:
    """One configuration key, as the documents show it."""

    section: str
    name: str
    description: str | None
    kind: str  # type and bounds, e.g. "number > 0"
    required: bool
    default: Any  # the default value (None: none), when not required
    example: Any  # a value to show: the default, else the field's first example


REPEATED: set[str] = set()  # sections that are lists of tables ([[consumer]])


def sections() -> list[tuple[str, type[BaseModel], str]]:
    """(name, model, description) of each [section], in the models' order."""
    found = []
    for name, field in Config.model_fields.items():
        model = field.annotation
        if get_origin(model) is list:  # [[name]]: one table per item
            (model,) = get_args(model)
            REPEATED.add(name)
        assert isinstance(model, type) and issubclass(model, BaseModel), name
        text = field.description or model.__doc__ or ""
        found.append((name, model, " ".join(text.split())))  # one line: a docstring may wrap
    return found


def keys() -> list[Key]:
    schema = config_json_schema()
    found = []
    for section, model, _ in sections():
        props = schema["$defs"][model.__name__]["properties"]
        for name, field in model.model_fields.items():
            required = field.is_required()
            default = None if required else _plain(field.get_default(call_default_factory=True))
            example = default
            if example is None or example == [] or example == {}:
                examples = field.examples or []
                example = _plain(examples[0]) if examples else example
            found.append(Key(section, name, field.description, _kind(props[name]), required, default, example))
    return found


def _plain(value: Any) -> Any:
    """A value as TOML holds it (paths as strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _kind(prop: dict[str, Any]) -> str:
    """The type and bounds of a JSON Schema property, in a few words."""
    options = prop.get("anyOf", [prop])
    parts = [_one_kind(o) for o in options if o.get("type") != "null"]
    return " or ".join(parts)


_BOUNDS = (("exclusiveMinimum", ">"), ("minimum", ">="), ("exclusiveMaximum", "<"), ("maximum", "<="))


def _one_kind(prop: dict[str, Any]) -> str:
    kind = prop.get("type", "value")
    if prop.get("format") == "path":
        kind = "path"
    if kind == "array":
        item, _, rest = _one_kind(prop.get("items", {})).partition(" ")
        kind = f"list of {item}s" + (f" {rest}" if rest else "")
    if kind == "object":
        values = prop.get("additionalProperties") or {}
        kind = f"table of {_one_kind(values)}s" if values else "table"
    if "enum" in prop:
        kind += " (one of " + ", ".join(json.dumps(v) for v in prop["enum"]) + ")"
    bounds = [f"{sign} {prop[key]:g}" for key, sign in _BOUNDS if key in prop]
    if bounds:
        kind += " " + ", ".join(bounds)
    if prop.get("minLength") == 1:
        kind += ", not empty"
    if "pattern" in prop and kind == "string":
        kind += f" matching {prop['pattern']}"
    return kind


def toml_value(value: Any) -> str:
    """`value` in TOML (inline forms only: one line per key)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string for these values
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _default_words(key: Key) -> str:
    if key.required:
        return "required"
    if key.default is None:
        return "default: not set"
    return f"default: {toml_value(key.default)}"


def example_toml() -> str:
    """The example configuration: every key, commented."""
    lines = [
        "# cdnreq configuration: every key, with its description, type and default.",
        f"# Generated by `{GENERATOR}` from cdnreq/config.py: do not edit by hand.",
        "# As it is (comments ignored) it is the minimal valid configuration: set the",
        "# required keys, then uncomment what you change. Relative paths are relative",
        "# to this file's directory.",
    ]
    by_section: dict[str, list[Key]] = {}
    for key in keys():
        by_section.setdefault(key.section, []).append(key)
    for section, _, about in sections():
        repeated = section in REPEATED  # none by default: the whole table is commented out
        header = f"# [[{section}]]" if repeated else f"[{section}]"
        lines += ["", f"# {about}" if about else "#", header]
        for key in by_section.get(section, []):
            lines += [f"# {line}" for line in textwrap.wrap(key.description or "", 96)] or ["#"]
            lines.append(f"# type: {key.kind}; {_default_words(key)}")
            prefix = "" if key.required and not repeated else "# "
            lines.append(f"{prefix}{key.name} = {toml_value(key.example)}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The configuration reference (docs/config-spec.md)."""
    lines = [
        "# Configuration reference",
        "",
        f"Generated by `{GENERATOR}` from the models in `cdnreq/config.py`: do not edit",
        "by hand. The file is TOML; unknown keys are refused, types are strict, and",
        "relative paths are relative to the file's directory. `examples/cdnreq.toml`",
        "holds every key, commented; `schemas/config.schema.json` is the JSON Schema.",
        "`cdnreq check-config` also checks what the file points at (certificates,",
        "token, secret, directories), as `run` does at start.",
    ]
    by_section: dict[str, list[Key]] = {}
    for key in keys():
        by_section.setdefault(key.section, []).append(key)
    for section, _, about in sections():
        lines += ["", f"## [[{section}]]" if section in REPEATED else f"## [{section}]", ""]
        if about:
            lines += [about, ""]
        lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key in by_section.get(section, []):
            default = "required" if key.required else ("not set" if key.default is None else f"`{toml_value(key.default)}`")
            lines.append(
                f"| `{key.name}` | {_cell(key.kind)} | {_cell(default)} | {_cell(key.description or '')} |"
            )
    return "\n".join(lines) + "\n"


def schema_json() -> str:
    return json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"


def generated() -> dict[str, str]:
    """Each generated file's path (relative to the repository) and content."""
    return {SCHEMA_PATH: schema_json(), EXAMPLE_PATH: example_toml(), SPEC_PATH: markdown()}


def write(root: Path) -> list[Path]:
    """Write the generated files under `root` (the repository); return them."""
    written = []
    for relative, text in generated().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Print one generated file, or write all three into the repository."""
    parser = argparse.ArgumentParser(prog="python -m cdnreq.configdoc")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--schema", action="store_true", help="print the JSON Schema of the configuration")
    what.add_argument("--example", action="store_true", help="print the example configuration, every key commented")
    what.add_argument("--markdown", action="store_true", help="print the configuration reference (Markdown)")
    what.add_argument(
        "--write", action="store_true",
        help="write the three into the repository (schemas/, examples/, docs/)",
    )
    args = parser.parse_args(argv)
    if args.write:
        for path in write(Path(__file__).resolve().parent.parent):
            print(path)
        return 0
    if args.example:
        sys.stdout.write(example_toml())
    elif args.markdown:
        sys.stdout.write(markdown())
    else:
        sys.stdout.write(schema_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
