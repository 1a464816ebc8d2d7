"""What the commands ask for, one module per job; each takes the store and settings, knows
nothing of the command line, and answers data.

::

    connections   connect (sign in), calendars list/select, disconnect
    integrations  filters, direction, pause/resume, a new integration's row
    status        what ``calsync status`` shows (with the store's fast path)
    visits        ``visits list``
    imports       practices / providers / visits from JSON Lines or CSV
    clients       provider clients for a stored integration (tokens + HTTP + the app's API)
    demo          ``calsync demo`` on the embedded sandbox
"""
