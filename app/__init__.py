"""EventFlow: a fast, durable event service on Redis Streams."""

__version__ = "0.1.0"
