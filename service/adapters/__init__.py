"""Adapters: the only code that talks to the outside (PostgreSQL, Vault, webhooks)."""
