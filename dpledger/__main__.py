"""``python -m dpledger``: the same command line as the ``dpledger`` script."""

from dpledger.cli import main

main()
