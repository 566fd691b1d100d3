"""How every benchmark script reports: indented JSON on stdout and, with `--out F`, the same text in F."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], out: Path | None) -> int:
    """Print `report` as indented JSON and write the same text to `out` when given; returns 0, the exit
    status."""
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    return 0
