#!/usr/bin/env python3
"""Run the security suite and rewrite the results table in SECURITY.md (what `make security` does).

Arguments are passed to pytest, e.g. `scripts/security-report.py -m "not slow"`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.security.report import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
