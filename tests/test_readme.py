"""The README's set-up commands are the ones CI runs, and its config table matches Settings."""

from __future__ import annotations

import re
from pathlib import Path

from imagegate.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = [b.strip() for b in _bash_blocks(setup)]
    assert len(commands) == 2, "the README has exactly two set-up commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_every_documented_imagegate_variable_is_a_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    client_side = {"SERVER", "API_KEY"}  # read by the CLI as a client, not by the server
    documented = set(re.findall(r"`IMAGEGATE_([A-Z_]+)`", readme)) - client_side
    fields = {name.upper() for name in Settings.model_fields}
    assert documented, "the configuration table lists IMAGEGATE_ variables"
    assert documented <= fields, documented - fields
