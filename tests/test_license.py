"""The LICENSE file is the Apache License 2.0 that pyproject declares, word for word."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# SHA-256 of https://www.apache.org/licenses/LICENSE-2.0.txt (MD5 3b83ef96387f14655fc854ddc3c6bd57,
# the checksum license scanners know it by): any edit to the text changes it.
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_pyproject_declares_apache_2_0() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_license_file_is_the_unmodified_apache_2_0_text() -> None:
    data = (ROOT / "LICENSE").read_bytes()
    text = data.decode("ascii")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert hashlib.sha256(data).hexdigest() == APACHE_2_0_SHA256
