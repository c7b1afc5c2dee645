"""Delivery channels of the store's Subscriptions: ``websocket`` and ``rest-hook``."""
