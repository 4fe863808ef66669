"""A Snowplow-protocol event collector that enforces anonymisation."""

__version__ = "0.1.0"
