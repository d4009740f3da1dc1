"""The dpledger command line: `dpledger --help`."""
