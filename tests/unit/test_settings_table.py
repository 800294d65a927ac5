"""README's "Settings" table and `settings.Settings` agree: every field an operator may set
is a row, every row is a field (or a variable another program of the stack reads), and a
default the table shows is the field's default. A setting that no row names was a setting
nobody could find, and two of them (MAX_PAGE_SIZE, MAX_WAIT_S) were read by nothing."""

from __future__ import annotations

import os
import re

import pytest

from settings import Settings
from tests.helpers import ROOT

# Read by the programs that run ours, not by `Settings`: the row names the file that reads it.
OTHER_PROGRAMS = {
    "WEB_CONCURRENCY": ROOT / "gunicorn.conf.py",
    "PROMETHEUS_MULTIPROC_DIR": ROOT / "telemetry" / "multiproc.py",
}
# Fields that are not an operator's to set.
NOT_FOR_OPERATORS = {"FAULT_INJECTION"}  # fault tests only; refused in production
# Table defaults that are words, not values.
NO_VALUE = {"unset", "unset (off)", "empty"}


def table_rows() -> list[tuple[str, str]]:
    """(variable, its default as the table writes it, or "" when it shows none)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        names_cell, default_cell = (cell.strip() for cell in line.strip("|").split("|")[:2])
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", names_cell)
        # One default per name, comma-separated, when the row names several.
        parts = default_cell.split(", ") if len(names) > 1 else [default_cell]
        assert len(parts) == len(names), f"{line}: one default per variable"
        for name, part in zip(names, parts, strict=True):
            literal = re.match(r"`([^`]*)`", part)
            rows.append((name, literal.group(1) if literal else part))
    return rows


ROWS = table_rows()
FIELDS = {name.upper(): field for name, field in Settings.model_fields.items()}


def test_every_setting_an_operator_may_set_has_a_row() -> None:
    documented = {name for name, _ in ROWS}
    assert set(FIELDS) - NOT_FOR_OPERATORS - documented == set()


def test_every_row_is_a_setting_or_read_by_the_program_it_names() -> None:
    for name, _ in ROWS:
        if name not in FIELDS:
            assert name in OTHER_PROGRAMS, f"{name} is in the table but not in settings.py"
            assert name in OTHER_PROGRAMS[name].read_text()


@pytest.mark.parametrize(
    ("name", "shown"),
    [(name, shown) for name, shown in ROWS if name in FIELDS],
    ids=[name for name, _ in ROWS if name in FIELDS],
)
def test_the_default_shown_is_the_default(
    name: str, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    field = FIELDS[name]
    default = field.get_default(call_default_factory=True)
    if shown in NO_VALUE:
        assert default in (None, []), f"{name}: the table says {shown!r}, the field {default!r}"
        return
    if not re.fullmatch(r"[^ ]+", shown):
        return  # words (a value computed at start, or `make run`'s): nothing to compare
    for variable in list(os.environ):
        if variable.upper() in FIELDS:
            monkeypatch.delenv(variable)
    monkeypatch.setenv(name, shown)  # read as an operator's value would be
    read = getattr(Settings(), name.lower())
    assert read == default, f"{name}: the table says {shown}, settings.py {default!r}"
