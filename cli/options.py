"""Option defaults that several commands share."""
from __future__ import annotations

# Events per transaction of `loyalty ingest`; `loyalty simulate` replays in batches of the same size, so
# instant upgrades (made at the end of each batch) land where a real ingest would put them.
BATCH_SIZE = 2000
