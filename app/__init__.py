"""dpledger's ledger service (FastAPI); ``app.main.create_app`` builds it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dpledger")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
