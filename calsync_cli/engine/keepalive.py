"""Keep quiet connections alive.

Refresh tokens die when unused: Microsoft's after 90 days, Google's after six months. An
integration that syncs refreshes its access token every hour or so; a paused or quiet one does
not. The sweep calls ``keep_alive``, which refreshes every connected integration whose access
token expired more than ``idle`` ago (7 days by default, far inside both limits). Microsoft's
rotated refresh token is stored by the token source.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from calsync_cli.config import Settings
from calsync_cli.errors import CalsyncError, KeyringError, StoreError, one_line
from calsync_cli.providers.base import ProviderError, ReauthRequired
from calsync_cli.store import integrations as store_integrations
from calsync_cli.store import states
from calsync_cli.store.db import Store
from calsync_cli.store.models import Integration

IDLE = timedelta(days=7)


async def keep_alive(
    store: Store, settings: Settings, *, now: datetime, idle: timedelta = IDLE
) -> dict[str, Any]:
    from calsync_cli.services.clients import token_source, token_store

    with store.read() as session:
        integrations = store_integrations.signed_in(session)
    tokens_store = token_store(settings, store)
    refreshed: list[int] = []
    reauth: list[int] = []
    errors: dict[int, str] = {}
    unusable: list[int] = []  # this host could not read or store the tokens (keyring, database)

    async def one(integ: Integration) -> None:
        assert integ.id is not None
        try:
            tokens = await asyncio.to_thread(tokens_store.get, integ.id)
            if tokens is None or (tokens.expires_at is not None and tokens.expires_at > now - idle):
                return
            await token_source(settings, integ.app, integ.id, integ.provider_id).refresh()
            refreshed.append(integ.id)
        except ReauthRequired:
            reauth.append(integ.id)
        except (KeyringError, StoreError) as exc:
            unusable.append(integ.id)
            errors[integ.id] = one_line(exc)
        except (ProviderError, CalsyncError) as exc:
            errors[integ.id] = one_line(exc)

    await asyncio.gather(*(one(i) for i in integrations))
    if reauth:
        with store.write() as session:
            for iid in reauth:
                integ = session.get(Integration, iid)
                if integ is not None:
                    states.mark_reauth(session, integ, now=now)
    return {
        "refreshed": sorted(refreshed),
        "reauth_needed": sorted(reauth),
        "unusable": sorted(unusable),
        "errors": errors,
    }
