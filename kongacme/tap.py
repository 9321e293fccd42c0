"""
``twistd kongacme``: command-line options and the service maker.
"""

from __future__ import annotations

import signal

from twisted.python import usage

from kongacme.config import load_config
from kongacme.errors import ConfigError


class Options(usage.Options):
    """
    Options for ``twistd kongacme``.
    """

    synopsis = "--config FILE"
    longdesc = (
        "Terminates TLS with a certificate per SNI name (static, or from an ACME CA), "
        "proxies to upstreams, answers ACME http-01 challenges on the HTTP listener. "
        "Send SIGHUP to reload the configuration."
    )
    optParameters = [["config", "c", None, "Path to the YAML configuration file (required)."]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError("invalid configuration in %s:\n%s" % (self["config"], e)) from None


def makeService(options: Options):
    """
    Build the daemon service and hook SIGHUP to its reload.
    """
    from twisted.internet import reactor

    from kongacme.service import DaemonService

    service = DaemonService(reactor, options["loaded"], config_path=options["config"])

    def on_hup(signum, frame):
        reactor.callFromThread(service.reload)

    if hasattr(signal, "SIGHUP"):
        # Installed now, not when the reactor runs: the listeners open
        # before that (privilegedStartService), and a SIGHUP arriving in
        # between would otherwise kill the process (the default action).
        # callFromThread only queues the reload, so it is safe in a signal
        # handler and before the reactor runs.
        signal.signal(signal.SIGHUP, on_hup)
    return service
