"""Every `invoke …` line of every runbook names an existing task with flags it accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pipeline.tasks import namespace

RUNBOOKS = sorted((Path(__file__).resolve().parent.parent / "runbooks").glob("*.md"))
INVOKE_LINE = re.compile(r"(?:^|`)(invoke [^`\n]+)")


def commands() -> list[tuple[str, int, str]]:
    found = []
    for path in RUNBOOKS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in INVOKE_LINE.finditer(line.strip()):
                found.append((path.name, number, match.group(1).strip()))
    return found


def flags_of(task) -> set[str]:
    names = set()
    for argument in task.get_arguments():
        for name in argument.names:
            dashed = name.replace("_", "-")
            names.add(f"--{dashed}" if len(dashed) > 1 else f"-{dashed}")
            if argument.kind is bool:
                names.add(f"--no-{dashed}")
    return names | {"--help", "-h"}


def test_there_are_runbooks_with_commands():
    names = {p.name for p in RUNBOOKS}
    assert {
        "README.md",
        "week3-live-integration.md",
        "week4-customer-pilot.md",
        "incidents.md",
    } <= names
    assert len(commands()) >= 20


@pytest.mark.parametrize(("runbook", "line", "command"), commands(), ids=lambda v: str(v)[:60])
def test_runbook_command_is_a_real_task_with_real_flags(runbook, line, command):
    words = shlex.split(command)
    assert words[0] == "invoke"
    name = words[1]
    try:
        task = namespace[name]
    except (KeyError, ValueError):
        pytest.fail(f"{runbook}:{line}: no task {name!r}")
    accepted = flags_of(task)
    for word in words[2:]:
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            assert flag in accepted, (
                f"{runbook}:{line}: {name} does not accept {flag} (accepts {sorted(accepted)})"
            )


def test_every_runbook_linked_from_the_index_exists():
    index = (Path(__file__).resolve().parent.parent / "runbooks" / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+\.md)", index):
        assert (Path(__file__).resolve().parent.parent / "runbooks" / target).is_file(), target
