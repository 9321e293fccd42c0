"""
``twistd kongacme``: command-line options and the service maker.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn, Optional, Sequence

from twisted import version as twisted_version
from twisted.python import usage

from kongacme import __version__
from kongacme.config import load_config
from kongacme.errors import ConfigError
from kongacme.logs import check_log_file

#: Exit status of ``twistd kongacme`` on a usage error or an invalid
#: configuration (twistd before 26.10 exits 0 on usage errors).
EXIT_USAGE = 1


class _InvalidConfig(usage.UsageError):
    """The options are fine; the configuration file is not."""


class Options(usage.Options):
    """
    Options for ``twistd kongacme``.

    A usage error prints the error first (then the options, for a wrong
    option; only the problems, for an invalid configuration) on stderr and
    exits with :data:`EXIT_USAGE`, instead of twistd's options table with
    the error at its end.
    """

    synopsis = "--config FILE"
    longdesc = (
        "Terminates TLS with a certificate per SNI name (static, or from an ACME CA), "
        "proxies to upstreams, answers ACME http-01 challenges on the HTTP listener. "
        "Send SIGHUP to reload the configuration."
    )
    optParameters = [["config", "c", None, "Path to the YAML configuration file (required)."]]

    def opt_version(self) -> NoReturn:
        """
        Print kongacme's version (and Twisted's) and exit.
        """
        print("kongacme %s (Twisted %s)" % (__version__, twisted_version.short()))
        sys.exit(0)

    def parseOptions(self, options: Optional[Sequence[str]] = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            self._usage_error(e)

    def _usage_error(self, error: usage.UsageError) -> NoReturn:
        command = "twistd kongacme"
        text = "%s: %s\n" % (command, error)
        if not isinstance(error, _InvalidConfig):
            text += "\n%s\n" % (str(self).rstrip("\n"),)
        sys.stderr.write(text)
        sys.stderr.flush()
        sys.exit(EXIT_USAGE)

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self["loaded"] = load_config(self["config"])
            # Here, not when twistd takes the log observer: a usage error, not a traceback.
            check_log_file(self["loaded"].logging.file)
        except ConfigError as e:
            raise _InvalidConfig("invalid configuration in %s:\n%s" % (self["config"], e)) from None


def makeService(options: Options):
    """
    Build the daemon service and hook SIGHUP to its reload.
    """
    from twisted.internet import reactor

    from kongacme.allocator import tune_allocator
    from kongacme.service import DaemonService

    tune_allocator()  # before the listeners, the workers and any relayed byte

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
