"""What the user sees and answers; the steps never print."""

from __future__ import annotations


from rich.console import Console
from rich.table import Table

ICONS = {"nothing": "✓", "create": "+", "update": "~", "check": "?", "skip": "-"}
RESULT_STYLE = {"ok": "green", "failed": "red", "skipped": "yellow", "not run": "dim"}


class Ui:
    def __init__(self, *, interactive: bool, output: str = "text"):
        self.interactive = interactive
        self.json = output == "json"
        # With --output json, stdout carries the JSON document alone.
        self.console = Console(stderr=self.json, highlight=False, soft_wrap=True)
        self._status = None
        self.conflicts = 0

    # -- messages -------------------------------------------------------------------------------
    def info(self, text: str) -> None:
        self.console.print(text)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]Warning:[/] {text}")

    def error(self, text: str) -> None:
        self.stop()  # the spinner would go on drawing over the message
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]Error:[/] {text}")

    # -- live status ----------------------------------------------------------------------------
    def begin(self, title: str) -> None:
        if self.console.is_terminal:
            self._status = self.console.status(f"{title}…")
            self._status.start()
        self._title = title

    def stop(self) -> None:
        """Clears the spinner, if one is turning."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def tick(self, text: str) -> None:
        if self._status is not None:
            self._status.update(f"{self._title}: {text}")

    def conflict(self) -> None:
        self.conflicts += 1

    def end(self, result: str, outcome: str) -> None:
        self.stop()
        style = RESULT_STYLE.get(result, "")
        mark = {"ok": "✓", "failed": "✗", "skipped": "-"}.get(result, "·")
        self.console.print(f"[{style}]{mark}[/] {self._title}: {outcome}")

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
        answer = question.ask()
        if answer is None:  # Ctrl-C inside a prompt
            raise KeyboardInterrupt
        return answer

    def confirm(self, text: str, default: bool = True) -> bool:
        if not self.interactive:
            return default
        import questionary

        return bool(self._ask(questionary.confirm(text, default=default)))

    def select(self, text: str, choices: list[str], default: str | None = None) -> str:
        import questionary

        return self._ask(questionary.select(text, choices=choices, default=default))

    def text(self, text: str, default: str = "", validate=None) -> str:
        import questionary

        return self._ask(questionary.text(text, default=default, validate=validate))
