"""Progress for long steps, silenced by the CLI's --quiet or by library callers: rich bars on
an interactive stderr; where there is none (a log file, a container, a notebook), the epoch
loop writes plain lines instead (`log_line`), so a training of hours is never silent."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on an interactive stderr; plainly otherwise."""
    if not _enabled or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, transient=True)


def log_line(text: str) -> None:
    """`text` as one line on stderr when no bar can be drawn there; nothing when silenced."""
    if _enabled and not sys.stderr.isatty():
        print(text, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """H:MM:SS, e.g. 3:21:05; the hours grow past 24 rather than turning into days."""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
