"""DP-FedAvg on Flower, charged to the ledger (``dpledger fl``).

Importing this package turns Flower's usage telemetry off unless ``FLWR_TELEMETRY_ENABLED`` is
already set (Flower reads it once, at import, and would otherwise report every simulation run
to Flower Labs over the network).
"""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
