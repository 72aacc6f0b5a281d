"""``fltui provision [WORKSPACE]``: the wizard on its own, without a server."""

from __future__ import annotations

from pathlib import Path

from textual.app import App

from fltui.privatefiles import deliver_privately
from fltui.wizard.screen import WizardScreen


class ProvisionApp(App[None]):
    """Runs the provisioning wizard and exits when it is closed."""

    CSS_PATH = "../console.tcss"
    TITLE = "fltui provision"

    def __init__(self, workspace: Path) -> None:
        """Open the wizard on ``workspace`` (its project.yml is loaded if there is one)."""
        super().__init__()
        self.workspace = workspace

    def on_mount(self) -> None:
        """Show the wizard; closing it ends the app."""
        self.push_screen(WizardScreen(self.workspace), lambda _: self.exit())

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """Save a screenshot in the workspace (it may show kit passwords), owner-only."""
        folder = Path(path) if path else self.workspace / "screenshots"
        deliver_privately(self, folder, filename, time_format)
        return None

    async def action_quit(self) -> None:
        """Quit as the wizard closes: asking first while passwords are unsaved."""
        if not guard_quit(self):
            await super().action_quit()


def guard_quit(app: App[None]) -> bool:
    """Route a quit through the wizard when one is open; True when the wizard took it.

    Kit passwords are shown only on the wizard's Kits step and stored nowhere
    else, so quitting the app must ask the same question as leaving the step.
    """
    wizard = next((s for s in app.screen_stack if isinstance(s, WizardScreen)), None)
    if wizard is None:
        return False
    if wizard is app.screen:
        wizard.request_close(then=app.exit)
    # else one of the wizard's questions is open, and it is already asking
    return True
