"""Tenants, principals (accounts) and their tokens."""
