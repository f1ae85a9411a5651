"""What the user sees and answers; the steps never print."""

from __future__ import annotations

import os
import sys
import threading
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

ICONS = {"nothing": "✓", "create": "+", "update": "~", "check": "?", "skip": "-"}
RESULT_STYLE = {"ok": "green", "failed": "red", "skipped": "yellow", "not run": "dim"}
HEARTBEAT_S = 10.0  # without a spinner, a wait says so at least this often (CI logs never fall silent)


def plain_terminal() -> bool:
    """NO_COLOR or a dumb terminal: not one escape sequence, and questions asked line by line."""
    return os.environ.get("NO_COLOR", "") != "" or os.environ.get("TERM", "") in ("dumb", "unknown")


def console(stderr: bool = False) -> Console:
    # emoji=False: names and Google's messages print as written (":smile:" stays text), and rich's emoji table
    # (about 1 MiB) is never loaded.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False,
                   color_system=None if plain_terminal() else "auto")


class Ui:
    def __init__(self, *, interactive: bool, output: str = "text"):
        self.interactive = interactive
        self.json = output == "json"
        self.plain = plain_terminal()
        # With --output json, stdout carries the JSON document alone.
        self.console = console(stderr=self.json)
        self._status = None
        self._title = ""  # the step begun last
        # Steps under way (several when independent steps apply together), and the one each thread works for.
        self._running: list[str] = []
        self._here = threading.local()
        self._lock = threading.RLock()
        self._beat = time.monotonic()
        self.conflicts = 0

    # -- messages -------------------------------------------------------------------------------
    def info(self, text: str) -> None:
        self.console.print(text)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]Warning:[/] {text}")

    def error(self, text: str) -> None:
        self.stop()  # the spinner would go on drawing over the message
        from coiled_setup import calllog

        console(stderr=True).print(f"[red]Error:[/] {calllog.pointer(text)}")

    # -- live status ----------------------------------------------------------------------------
    def begin(self, title: str) -> None:
        """A step starts; called from the thread that works for it."""
        with self._lock:
            self._running.append(title)
            self._title = self._here.title = title
            if self.console.is_terminal and not self.plain:  # a spinner is drawn with escape sequences
                if self._status is None:
                    self._status = self.console.status(f"{title}…")
                    self._status.start()
                else:
                    self._status.update(self._under_way())
            self._beat = time.monotonic()

    def stop(self) -> None:
        """Clears the spinner, if one is turning."""
        with self._lock:
            self._running.clear()
            if self._status is not None:
                self._status.stop()
                self._status = None

    def _under_way(self) -> str:
        return " · ".join(self._running) + "…"

    def _step(self) -> str:
        # A step's own helper threads (say, one per region) work for the step begun last.
        return getattr(self._here, "title", None) or self._title

    def tick(self, text: str) -> None:
        with self._lock:
            if self._status is not None:
                self._status.update(f"{self._step()}: {text}")
            elif time.monotonic() - self._beat >= HEARTBEAT_S:
                # No spinner (a log, a pipe, a dumb terminal): a line now and then, so the output never falls silent.
                self._beat = time.monotonic()
                self.console.print(f"… {self._step()}: {escape(text)}")

    def conflict(self) -> None:
        with self._lock:
            self.conflicts += 1

    def end(self, result: str, outcome: str, title: str | None = None) -> None:
        """A step ends (`title`: which one, when several are under way)."""
        with self._lock:
            title = title or self._step()
            if title in self._running:
                self._running.remove(title)
            if not self._running:
                self.stop()
            elif self._status is not None:
                self._status.update(self._under_way())
            style = RESULT_STYLE.get(result, "")
            mark = {"ok": "✓", "failed": "✗", "skipped": "-"}.get(result, "·")
            self.console.print(f"[{style}]{mark}[/] {title}: {outcome}")

    # -- tables ---------------------------------------------------------------------------------
    def plan(self, rows: list[tuple[str, str, str]]) -> None:
        t = Table(title="Plan", title_justify="left", show_lines=False)
        t.add_column("Step")
        t.add_column("Action")
        t.add_column("Detail", overflow="fold")
        for step, action, detail in rows:
            t.add_row(step, f"{ICONS.get(action, ' ')} {action}", detail)
        self.console.print(t)

    def summary(self, rows: list[tuple[str, str, str]]) -> None:
        t = Table(title="Summary", title_justify="left")
        t.add_column("Step")
        t.add_column("Result")
        t.add_column("Outcome", overflow="fold")
        for step, result, outcome in rows:
            t.add_row(step, f"[{RESULT_STYLE.get(result, '')}]{result}[/]", outcome)
        self.console.print(t)

    # -- questions (questionary is imported only when a question is asked) -----------------------
    def _ask(self, question):
        # unsafe_ask: Ctrl-C raises KeyboardInterrupt, told once by the command (ask() would also print its own).
        return question.unsafe_ask()

    def confirm(self, text: str, default: bool = True) -> bool:
        if not self.interactive:
            return default
        if self.plain:
            answers = {"y": True, "yes": True, "n": False, "no": False, "": default}
            return answers[self._line(f"{text} [{'Y/n' if default else 'y/N'}]: ",
                                      lambda a: True if a.lower() in answers else "Answer y or n.").lower()]
        import questionary

        return bool(self._ask(questionary.confirm(text, default=default)))

    def select(self, text: str, choices: list[str], default: str | None = None) -> str:
        if self.plain:
            pick = choices.index(default) + 1 if default in choices else 1
            self._say(text + "\n" + "\n".join(f"  {i}) {c}" for i, c in enumerate(choices, 1)) + "\n")

            def ok(a):
                return True if a == "" or (a.isdigit() and 1 <= int(a) <= len(choices)) else \
                    f"Choose a number from 1 to {len(choices)}."
            answer = self._line(f"Choose 1-{len(choices)} [{pick}]: ", ok)
            return choices[int(answer or pick) - 1]
        import questionary

        return self._ask(questionary.select(text, choices=choices, default=default))

    def text(self, text: str, default: str = "", validate=None) -> str:
        if self.plain:
            def ok(a):
                return validate(a or default) if validate else True
            return self._line(f"{text.rstrip(':')} [{default}]: ", ok) or default
        import questionary

        return self._ask(questionary.text(text, default=default, validate=validate))

    # -- line by line, for NO_COLOR and dumb terminals ------------------------------------------
    def _say(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def _line(self, prompt: str, validate) -> str:
        """One answer, asked again until `validate` (questionary's convention: True or a message) accepts it."""
        while True:
            self._say(prompt)
            line = sys.stdin.readline()
            if not line:  # end of input: nobody is there to answer
                raise KeyboardInterrupt
            answer = line.strip()
            verdict = validate(answer)
            if verdict is True:
                return answer
            self._say(f"{verdict or 'Not a valid answer.'}\n")
