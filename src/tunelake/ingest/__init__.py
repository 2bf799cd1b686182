"""Ingest: read raw files (readers) and map each row of a known format to a canonical record (adapters)."""
