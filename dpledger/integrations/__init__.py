"""Bring-your-own-trainer integrations of the ledger (each imports its framework lazily)."""
