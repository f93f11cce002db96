"""Progress reporting for long-running commands (train, eval, profile).

On a terminal: a rich progress bar with live fields (loss, lr, tokens/s, ...). Elsewhere (CI logs,
pipes): one plain line every ``log_every`` updates, so logs stay readable and greppable.
Only the main process of a distributed run reports (``enabled=False`` elsewhere).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressReporter:
    """``with ProgressReporter(total, "train") as p: p.update(n, loss=..., lr=...)``."""

    def __init__(
        self,
        total: int,
        description: str,
        *,
        completed: int = 0,
        log_every: int = 10,
        enabled: bool = True,
        stream=None,
    ) -> None:
        self.total = total
        self.description = description
        self.completed = completed
        self.log_every = max(1, log_every)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream)
        self.live = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._start = time.perf_counter()

    def __enter__(self) -> ProgressReporter:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.description, total=self.total, completed=self.completed, info=""
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, advance: int = 1, **fields: float | str) -> None:
        self.completed += advance
        if not self.enabled:
            return
        info = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        if self._progress is not None:
            self._progress.update(self._task, advance=advance, info=info)
        elif self.completed % self.log_every == 0 or self.completed == self.total:
            self._write(f"{self.description} {self.completed}/{self.total}  {info}")

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            self._write(message)

    def _write(self, line: str) -> None:
        """One plain line; a stream that cannot take it (a full disk behind ``2>log``,
        /dev/full) ends the reporting, not the work it reports on."""
        if not write_line(line, self.stream):
            self.enabled = False


def _fmt(v: float | str) -> str:
    if isinstance(v, str):
        return v
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.3e}"


Logger = Callable[[str], None]


def write_line(line: str, stream) -> bool:  # noqa: ANN001 - any text stream
    """``line`` and a newline to ``stream`` (flushed); False where the stream cannot take it
    (closed, a full disk, a broken pipe): progress and logs are not worth a run."""
    if stream is None:
        return False
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):  # ValueError: a closed file
        return False
    return True


def stderr_logger(enabled: bool = True) -> Logger:
    state = {"on": enabled}

    def log(message: str) -> None:
        if state["on"] and not write_line(message, sys.stderr):
            state["on"] = False

    return log
