"""kongacme: Kong's ACME plugin as a standalone Twisted TLS proxy daemon."""

__version__ = "0.1.0.dev0"
