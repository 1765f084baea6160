"""What a person watching the terminal sees while an experiment runs.

On a terminal with rich installed (pip install pyactor[tune]): a live table, redrawn four times a
second, with the count of trials in each state, the best result so far, and one row per running
trial (its parameters and latest metric). Elsewhere (a log file, CI, verbose=1 without rich):
one plain status line every few seconds. verbose=0 prints nothing. The redraw is a task on the
controller's loop; it reads the trials and never changes them.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time

from pyactor.tune.trial import TrialStatus

_LIVE_INTERVAL_S = 0.25
_PLAIN_INTERVAL_S = 5.0


def make_reporter(verbose: int, metric: str | None, mode: str | None):
    if verbose == 0:
        return None
    if sys.stdout.isatty():
        try:
            import rich  # noqa: F401
            return RichReporter(metric, mode)
        except ImportError:
            pass
    return PlainReporter(metric, mode)


class _Reporter:
    interval_s = _PLAIN_INTERVAL_S

    def __init__(self, metric: str | None, mode: str | None):
        self.metric, self.mode = metric, mode
        self._task: asyncio.Task | None = None
        self._started = time.monotonic()

    def start(self, controller) -> None:
        self._task = asyncio.ensure_future(self._loop(controller))

    async def _loop(self, controller) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.show(controller)

    def stop(self, controller) -> None:
        if self._task is not None:
            self._task.cancel()
        self.show(controller, final=True)

    def counts(self, controller) -> dict:
        counts: dict = {}
        for trial in controller.get_trials():
            counts[trial.status.value] = counts.get(trial.status.value, 0) + 1
        return counts

    def best(self, controller):
        if self.metric is None:
            return None
        scored = [t for t in controller.get_trials()
                  if isinstance(t.last_result.get(self.metric), (int, float))
                  and math.isfinite(t.last_result[self.metric])]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.last_result[self.metric])

    def summary(self, controller) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts(controller).items()))
        line = (f"[tune] {time.monotonic() - self._started:.1f}s, "
                f"{controller.num_results} results; trials: {counts or 'none yet'}")
        best = self.best(controller)
        if best is not None:
            line += (f"; best {self.metric}={best.last_result[self.metric]:.5g} "
                     f"({best.trial_id} {best.experiment_tag})")
        return line

    def show(self, controller, final: bool = False) -> None:
        raise NotImplementedError


class PlainReporter(_Reporter):
    def show(self, controller, final: bool = False) -> None:
        print(self.summary(controller) + (" (finished)" if final else ""), flush=True)


class RichReporter(_Reporter):
    interval_s = _LIVE_INTERVAL_S

    def start(self, controller) -> None:
        from rich.live import Live
        self._live = Live(self._render(controller), auto_refresh=False, transient=False)
        self._live.start()
        super().start(controller)

    def show(self, controller, final: bool = False) -> None:
        self._live.update(self._render(controller), refresh=True)
        if final:
            self._live.stop()

    def _render(self, controller):
        from rich.markup import escape
        from rich.table import Table
        table = Table(title=escape(self.summary(controller)), title_justify="left")
        table.add_column("trial")
        table.add_column("status")
        table.add_column("params")
        table.add_column("iter", justify="right")
        if self.metric:
            table.add_column(self.metric, justify="right")
        table.add_column("time (s)", justify="right")
        running = [t for t in controller.get_trials() if t.status == TrialStatus.RUNNING]
        best = self.best(controller)
        rows = running + ([best] if best is not None and best not in running else [])
        for trial in rows[:20]:
            result = trial.last_result
            cells = [trial.trial_id, "BEST" if trial is best and trial not in running
                     else trial.status.value, trial.experiment_tag,
                     str(result.get("training_iteration", ""))]
            if self.metric:
                value = result.get(self.metric)
                cells.append(f"{value:.5g}" if isinstance(value, (int, float)) else "")
            cells.append(f"{result.get('time_total_s', 0.0):.1f}")
            table.add_row(*cells)
        return table
