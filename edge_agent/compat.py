"""Python 3.10 support: the 3.11 standard-library pieces the agent uses, with their backports.

Gateways on Ubuntu 22.04 / JetPack 6 ship Python 3.10; `tomli` and `taskgroup` are the maintained backports of
`tomllib` and `asyncio.TaskGroup` (pyproject installs them only there).
"""

from __future__ import annotations

import sys
from datetime import datetime

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup

    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib
    from taskgroup import TaskGroup

__all__ = ["TaskGroup", "parse_iso8601", "tomllib"]


def parse_iso8601(text: str) -> datetime:
    """`datetime.fromisoformat`, also for a trailing `Z` (UTC), which 3.10's parser refuses."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)
