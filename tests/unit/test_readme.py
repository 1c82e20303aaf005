"""The README's tables match the code they describe."""

import re
from pathlib import Path

from workers import settings
from workers.operations import REGISTRY

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def table_rows(heading):
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if re.match(r"\| `", line)]


def test_settings_table_lists_every_setting_with_its_default():
    rows = {re.match(r"\| `(\w+)`", row).group(1): row for row in table_rows("Settings")}
    assert set(rows) == set(settings.SETTINGS)
    for name, setting in settings.SETTINGS.items():
        if setting.default not in (None, ()):
            assert f"`{setting.default}`" in rows[name], name


def test_operations_table_lists_every_operation_and_its_parameters():
    rows = {re.match(r"\| `(\w+)`", row).group(1): row for row in table_rows("Operations")}
    assert set(rows) == set(REGISTRY)
    for name, op in REGISTRY.items():
        for parameter in op.params:
            assert f"`{parameter}" in rows[name], (name, parameter)
