"""What the command line imports at start (issue 18): only what its commands use before they run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_parser_does_not_import_the_http_client_of_the_look_up_commands() -> None:
    # urllib.request pulls in http.client, email and ssl (≈50 ms): only `lookup` and `explain` fetch.
    code = ("import sys, flows.cli; flows.cli.build_parser(); "
            "print(sorted(m for m in ('urllib.request', 'http.client', 'ssl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
