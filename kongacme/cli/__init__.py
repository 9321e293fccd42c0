"""
The ``kongacme`` command: check a configuration file, and drive a running
daemon through its Admin API (list certificates, issue, renew).

Only the standard library is imported at start (urllib for HTTP), so the
command starts fast; ``check-config`` imports the configuration loader.
"""

from kongacme.cli._main import main, run

__all__ = ["main", "run"]
