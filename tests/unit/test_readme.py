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


def test_guarantees_table_names_tests_that_exist():
    section = README.split("## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    root = Path(__file__).resolve().parents[2]
    named = 0
    for row in [line for line in section.splitlines() if line.startswith("| ") and ("`f/" in line or "`tests/" in line)]:
        module = None
        for ref in re.findall(r"`((?:f/|tests/)[\w/]+\.py)?(?:::(\w+))?`", row):
            path, test = ref
            if path:
                module = (root / path.replace("f/", "tests/faults/", 1)).read_text()
            if test:
                assert module is not None and f"def {test}(" in module, (row, test)
                named += 1
    assert named >= 20
