"""The append-only event store behind a small interface (SQLite now; PostgreSQL later)."""
