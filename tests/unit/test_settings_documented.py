"""docs/settings.md documents every field of `Settings` exactly once, with its real default.

A row of docs/settings.md is a markdown table row: variable | default | meaning. The variable
cell names, in backticks, every environment variable the field reads: `EDURANKER_<FIELD>`, or the
names of its `validation_alias` when it has one (`CROSS_ENCODER_PATH` or
`EDURANKER_CROSS_ENCODER_PATH`).

The default cell follows one rule:

- `unset` (no backticks): the default is None;
- `empty` (no backticks): the default is an empty string or an empty secret;
- otherwise one value in backticks, exactly what one would write in the variable to get the
  default: strings, paths and choices verbatim, booleans `true` or `false` (nothing else),
  numbers as plain numbers (`10`, `0.95`, `2e-5`, `1048576`), durations in seconds or with a
  unit (`1h`, `7d`). The value is read with the field's own validation, as the environment
  variable would be, and must equal `Settings.model_fields[name].default`.

No other markdown file may carry a table row whose first cell names a setting: other pages link
to docs/settings.md or mention a variable in prose. Only these files are read; nothing else.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import SecretStr, TypeAdapter
from pydantic.fields import FieldInfo

from shared.settings import Settings
from tests.markdown import ROOT, code_spans, is_separator, markdown_files, table_cells

SETTINGS_DOC = ROOT / "docs" / "settings.md"
MARKERS = {"unset": None, "empty": ""}


def env_names(name: str, field: FieldInfo) -> set[str]:
    """The variables a field is read from, as pydantic-settings maps them (case-insensitive)."""
    alias = field.validation_alias
    if alias is None:
        return {f"{Settings.model_config['env_prefix']}{name}".upper()}
    if isinstance(alias, str):
        return {alias.upper()}
    return {choice.upper() for choice in alias.choices if isinstance(choice, str)}


FIELDS = Settings.model_fields
FIELD_BY_ENV = {env: name for name, field in FIELDS.items() for env in env_names(name, field)}


def rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every table row in a file, headers and separators left out."""
    found: list[tuple[int, list[str]]] = []
    previous_was_row = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        cells = table_cells(line)
        if cells is not None and not is_separator(cells) and previous_was_row:
            found.append((number, cells))
        # The first row of a table is its header: a row counts only after another row.
        previous_was_row = cells is not None
    return found


def named_fields(cell: str) -> tuple[set[str], set[str]]:
    """(fields, unknown names): what a variable cell's backticked names stand for."""
    names = {span.upper() for span in code_spans(cell)}
    return {FIELD_BY_ENV[n] for n in names if n in FIELD_BY_ENV}, {n for n in names if n not in FIELD_BY_ENV}


@cache
def adapter(name: str) -> TypeAdapter[Any]:
    field = FIELDS[name]
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)


def plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def shown_default_matches(name: str, cell: str) -> str | None:
    """None when the default cell follows the rule and equals the field's default; else why not."""
    default = plain(FIELDS[name].default)
    if cell in MARKERS:
        shown = MARKERS[cell]
        return None if shown == default else f"shows {cell!r}, the default is {default!r}"
    spans = code_spans(cell)
    if len(spans) != 1 or cell != f"`{spans[0]}`":
        return f"the default {cell!r} is not one value in backticks, `unset` or `empty`"
    text = spans[0]
    if FIELDS[name].annotation is bool and text not in ("true", "false"):
        return f"a boolean is shown `true` or `false`, not {text!r}"
    if text == "":
        return "an empty default is shown as empty, without backticks"
    try:
        shown = plain(adapter(name).validate_python(text))
    except ValueError as exc:
        return f"`{text}` is not a value of this setting: {exc}"
    return None if shown == default else f"shows `{text}` (read as {shown!r}), the default is {default!r}"


def settings_rows() -> list[tuple[int, list[str]]]:
    return rows(SETTINGS_DOC)


def test_every_setting_has_exactly_one_row() -> None:
    lines: dict[str, list[int]] = {name: [] for name in FIELDS}
    for number, cells in settings_rows():
        fields, _ = named_fields(cells[0])
        for name in fields:
            lines[name].append(number)
    missing = sorted(name for name, found in lines.items() if not found)
    repeated = {name: found for name, found in lines.items() if len(found) > 1}
    assert not missing, f"settings missing from docs/settings.md: {missing}"
    assert not repeated, f"settings documented more than once in docs/settings.md (lines): {repeated}"


def test_every_row_names_real_settings_only_and_one_field_each() -> None:
    problems = []
    for number, cells in settings_rows():
        fields, unknown = named_fields(cells[0])
        if unknown or len(fields) != 1:
            problems.append(f"line {number}: {cells[0]!r} names {sorted(fields)}, unknown {sorted(unknown)}")
            continue
        (name,) = fields
        expected = env_names(name, FIELDS[name])
        if {span.upper() for span in code_spans(cells[0])} != expected:
            problems.append(f"line {number}: {cells[0]!r} should name exactly {sorted(expected)}")
        if len(cells) != 3:
            problems.append(f"line {number}: {len(cells)} cells, not variable | default | meaning")
    assert not problems, "\n".join(problems)


def test_every_row_shows_the_real_default() -> None:
    problems = []
    for number, cells in settings_rows():
        fields, _ = named_fields(cells[0])
        if len(fields) == 1 and len(cells) > 1:
            why = shown_default_matches(next(iter(fields)), cells[1])
            if why:
                problems.append(f"line {number} ({cells[0]}): {why}")
    assert not problems, "\n".join(problems)


def test_no_other_page_repeats_a_settings_row() -> None:
    repeats = []
    for path in markdown_files():
        if path == SETTINGS_DOC:
            continue
        for number, cells in rows(path):
            fields, _ = named_fields(cells[0])
            if fields:
                repeats.append(f"{path.relative_to(ROOT)}:{number}: {cells[0]} (link to docs/settings.md)")
    assert not repeats, "settings rows outside docs/settings.md:\n" + "\n".join(repeats)


def test_the_default_rule_tells_wrong_defaults_apart() -> None:
    """The checks above would catch a wrong default, a wrong rendering or a wrong marker."""
    assert shown_default_matches("kafka_timeout_s", "`10`") is None
    assert shown_default_matches("train_pending_timeout_s", "`1h`") is None
    assert shown_default_matches("learning_rate", "`2e-5`") is None
    assert shown_default_matches("admin_keys", "empty") is None
    assert shown_default_matches("cross_encoder_path", "unset") is None
    assert shown_default_matches("kafka_timeout_s", "`11`")
    assert shown_default_matches("train_pending_timeout_s", "`1m`")
    assert shown_default_matches("search_requires_key", "`no`")
    assert shown_default_matches("admin_keys", "unset")
    assert shown_default_matches("cross_encoder_path", "empty")
    assert shown_default_matches("store_url", "sqlite:///var/eduranker.db")
