"""Sealed Notes service: Flask API, key release, store and Vault adapter."""

from service.app import create_app

__all__ = ["create_app"]
