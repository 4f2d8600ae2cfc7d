"""Storage: sqlmodel tables, database set-up, the append-only ledger and its verification."""
