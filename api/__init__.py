"""The HTTP API for loan systems (FastAPI): benefits, quotes, redemptions, events, ledgers."""
