"""Retention: the background job that deletes expired trace rows and nulls expired bodies (docs/retention.md)."""
