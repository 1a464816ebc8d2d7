"""Calendar providers: one interface (``base``), Google Calendar v3 and Microsoft Graph clients."""
