"""The calendar apps calsync connects to, named once."""

from __future__ import annotations

from typing import Literal

from calsync_cli.errors import InputError

App = Literal["google", "outlook"]
APPS: tuple[App, ...] = ("google", "outlook")


def app_name(text: str) -> App:
    """``text`` as an ``App``; an ``InputError`` naming the choices otherwise."""
    for app in APPS:
        if text == app:
            return app
    raise InputError(f"unknown calendar app {text!r}", hint="Use google or outlook")


def connect_command(app: str, provider_id: str | None) -> str:
    """The exact command that signs an integration in (again)."""
    return f"calsync connect {app} --provider {provider_id if provider_id is not None else '<ID>'}"
