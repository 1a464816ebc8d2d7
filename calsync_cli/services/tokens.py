"""Moving sign-ins between the token stores (``calsync tokens migrate``).

A move writes the tokens to the target, reads them back, and only then deletes them from the
source, so an interrupted run loses nothing and running it again finishes the job. Where both
stores hold tokens for an integration, the ones that expire later are kept (a worker may have
refreshed them there since).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from calsync_cli.auth.sealed import SealedTokenStore
from calsync_cli.auth.tokens import Tokens, TokenStorage, TokenStore
from calsync_cli.config import TOKEN_STORES, Settings
from calsync_cli.errors import CalsyncError, InputError
from calsync_cli.store import sealed as rows
from calsync_cli.store.db import Store


@dataclass
class MigrateResult:
    to: str
    #: integrations whose tokens were moved to the target
    moved: list[int] = field(default_factory=list)
    #: integrations whose tokens were in the target already (a copy in the source was removed)
    already: list[int] = field(default_factory=list)
    #: connected integrations with tokens in neither store (they need ``calsync connect``)
    missing: list[int] = field(default_factory=list)
    #: the CALSYNC_TOKEN_STORE setting in effect when this ran
    setting: str = "keyring"

    def to_json(self) -> dict[str, Any]:
        return {
            "to": self.to,
            "moved": len(self.moved),
            "already": len(self.already),
            "missing": len(self.missing),
            "integrations": {
                "moved": self.moved,
                "already": self.already,
                "missing": self.missing,
            },
            "token_store_setting": self.setting,
        }


def _expiry(tokens: Tokens) -> datetime:
    return tokens.expires_at or datetime.min.replace(tzinfo=UTC)


def migrate(settings: Settings, store: Store, to: str) -> MigrateResult:
    """Move every connected integration's tokens into the ``to`` store (``database`` or
    ``keyring``). Idempotent. Raises ``InputError`` for an unknown target, ``TokenKeyError`` for
    a missing or wrong sealing key, ``KeyringError`` when the keyring is unusable."""
    if to not in TOKEN_STORES:
        raise InputError(f"unknown token store {to!r}", hint="Use --to database or --to keyring")
    keyring: TokenStorage = TokenStore()
    database: TokenStorage = SealedTokenStore(store, key_file=settings.secret_key_file)
    source, target = (keyring, database) if to == "database" else (database, keyring)
    with store.read() as session:
        ids = rows.signed_in_ids(session)
    result = MigrateResult(to=to, setting=settings.token_store)
    for iid in ids:
        have = source.get(iid)
        there = target.get(iid)
        if have is None:
            (result.already if there is not None else result.missing).append(iid)
            continue
        if there is None or _expiry(have) > _expiry(there):
            target.put(iid, have)
            if target.get(iid) != have:
                raise CalsyncError(
                    f"integration {iid}'s tokens did not read back from the {to} store; "
                    "nothing was removed from the other one",
                    hint="Run the command again",
                )
            result.moved.append(iid)
        else:
            result.already.append(iid)
        source.delete(iid)
    return result
