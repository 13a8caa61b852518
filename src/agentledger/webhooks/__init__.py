"""Webhooks: signed, durable delivery of alerts (docs/alerts.md)."""
