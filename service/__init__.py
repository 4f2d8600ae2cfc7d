"""Use cases shared by the CLI and (later) the HTTP API: ingest, benefits, reversal. Each owns its transactions."""
