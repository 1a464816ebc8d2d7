"""A stand-in for the user's web browser, for sign-ins against the sandbox.

With ``auto_approve`` the sandbox's consent page answers at once with a redirect to the
loopback listener, so "opening" the sign-in URL is one GET that follows redirects. Only
loopback addresses are visited: whatever a URL or a redirect says, this never leaves the host.
"""

from __future__ import annotations

import ipaddress

import httpx2

LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _refuse_remote(request: httpx2.Request) -> None:
    if request.url.scheme != "http" or not is_loopback(request.url.host):
        raise httpx2.UnsupportedProtocol("the sandbox browser visits only http://loopback")


def follow_sign_in(url: str, *, timeout: float = 10.0) -> bool:
    """GET ``url`` and follow its redirects, as a browser would (usable as ``open_browser``).

    True when the last answer was a success (the loopback listener's "signed in" page).
    Never raises: a sign-in that did not reach the listener shows up as the caller's timeout.
    """
    try:
        with httpx2.Client(
            follow_redirects=True,
            timeout=timeout,
            trust_env=False,  # loopback only: no proxy from the environment
            event_hooks={"request": [_refuse_remote]},
        ) as client:
            return client.get(url).is_success
    except (httpx2.HTTPError, httpx2.InvalidURL):
        return False
