"""
Tests for etc/kongacme.service, the shipped systemd unit: the hardening it
asks for is applied to a real daemon process, which must then still
complete TLS handshakes and ACME orders (a real Pebble), so the unit and the
code cannot drift apart again (``MemoryDenyWriteExecute=yes`` once broke
every handshake: pyOpenSSL's callbacks need write+execute memory).

Applied here, from the unit's own lines, before ``execve`` of twistd with
the unit's ``ExecStart`` arguments (as systemd does):

- ``PR_SET_NO_NEW_PRIVS``, always (``NoNewPrivileges=yes``; systemd implies
  it with ``SystemCallFilter=`` and the ``Restrict*`` options too);
- ``PR_SET_MDWE`` (refuse write+execute memory) when the unit has
  ``MemoryDenyWriteExecute=yes`` (systemd enforces it with seccomp; the
  kernel's prctl refuses the same mappings);
- ``CapabilityBoundingSet=``: every other capability dropped from the
  bounding set (the test runs as root, so the daemon keeps only these);
- ``UMask=``, ``LimitNOFILE=``.

Not applied (they need systemd's namespaces, seccomp filters or a service
user): ``ProtectSystem``, ``PrivateTmp``, ``SystemCallFilter``,
``RestrictAddressFamilies``, ``User``... ``systemd-analyze security``
scores those, and a test keeps that score at 1.8 or better.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase


from tests import daemonproc, tlsclients
from tests.test_daemon_acme import AcmeDaemonMixin

UNIT = os.path.join(daemonproc.REPO, "etc", "kongacme.service")
#: twistd's own ``python -c`` code (the tests below patch daemonproc's).
TWISTD = daemonproc.TWISTD

#: Capability names of linux/capability.h, by number.
CAPABILITIES = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID "
    "CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW "
    "CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT "
    "CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD "
    "CAP_LEASE CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG "
    "CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
).split()

#: Run as ``python -c LAUNCHER <spec>``: applies the hardening in ``spec``
#: (a repr'd dict, see :func:`hardening`), checks it took, then execs twistd.
LAUNCHER = r"""
import ast, ctypes, os, resource, sys
# linux/prctl.h
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_GET_MDWE = 24, 38, 65, 66
PR_MDWE_REFUSE_EXEC_GAIN = 1
spec = ast.literal_eval(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def prctl(option, arg=0):
    zero = ctypes.c_ulong(0)
    result = libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero)
    if result < 0:
        raise OSError(ctypes.get_errno(), "prctl(%d, %d) failed" % (option, arg))
    return result
if spec["nofile"] is not None:
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (spec["nofile"], spec["nofile"]))
    except (ValueError, OSError):
        # A hard limit this machine does not allow raising: as high as it goes.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, spec["nofile"]),) * 2)
for cap in spec["drop_capabilities"]:
    try:
        prctl(PR_CAPBSET_DROP, cap)
    except OSError as e:
        if e.errno != 22:  # EINVAL: a capability this kernel does not have
            raise
if spec["umask"] is not None:
    os.umask(spec["umask"])
prctl(PR_SET_NO_NEW_PRIVS, 1)
if spec["mdwe"]:
    prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)
    assert prctl(PR_GET_MDWE) & PR_MDWE_REFUSE_EXEC_GAIN
print("hardening applied: %r" % (spec,), flush=True)
os.execv(sys.executable, [sys.executable, "-c", spec["twistd"]] + spec["argv"])
"""


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """
    A systemd unit file as ``{section: [(key, value), ...]}``, repeated keys
    kept in order (``SystemCallFilter=`` lines add up).
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def service_settings(text: str) -> dict[str, str]:
    """The ``[Service]`` settings, the last value of each key."""
    return dict(parse_unit(text)["Service"])


def _yes(value: str | None) -> bool:
    return (value or "").lower() in ("yes", "true", "on", "1")


def hardening(text: str, config_path: str) -> dict[str, Any]:
    """
    What of the unit in ``text`` :data:`LAUNCHER` applies: a dict for it.

    :param config_path: replaces the ``--config`` file of ``ExecStart``.
    """
    service = service_settings(text)
    exec_start = shlex.split(service["ExecStart"])
    argv = exec_start[[os.path.basename(word) for word in exec_start].index("twistd") + 1:]
    argv[argv.index("--config") + 1] = config_path
    keep = service.get("CapabilityBoundingSet")
    drop = [] if keep is None else [n for n, name in enumerate(CAPABILITIES) if name not in keep.split()]
    umask = service.get("UMask")
    nofile = service.get("LimitNOFILE")
    return {
        "argv": argv,
        "mdwe": _yes(service.get("MemoryDenyWriteExecute")),
        "drop_capabilities": drop,
        "umask": int(umask, 8) if umask else None,
        "nofile": int(nofile) if nofile else None,
        "twistd": TWISTD,
    }


def read_unit() -> str:
    with open(UNIT, encoding="utf-8") as f:
        return f.read()


class UnitFileTests(SynchronousTestCase):
    """
    Tests for reading etc/kongacme.service.
    """

    def test_parse(self) -> None:
        """
        The shipped unit parses into what the hardening test applies: the
        ExecStart arguments after twistd with the config path replaced, no
        MemoryDenyWriteExecute, CAP_NET_BIND_SERVICE kept, umask 0077.
        """
        spec = hardening(read_unit(), "/tmp/x.yaml")
        self.assertEqual(spec["argv"], ["--nodaemon", "--pidfile=", "kongacme", "--config", "/tmp/x.yaml"])
        self.assertFalse(spec["mdwe"])
        self.assertNotIn(CAPABILITIES.index("CAP_NET_BIND_SERVICE"), spec["drop_capabilities"])
        self.assertIn(CAPABILITIES.index("CAP_SYS_ADMIN"), spec["drop_capabilities"])
        self.assertEqual((spec["umask"], spec["nofile"]), (0o077, 65536))

    def test_memory_deny_write_execute_is_applied(self) -> None:
        """
        A unit with MemoryDenyWriteExecute=yes (the last value wins) asks
        the launcher for PR_SET_MDWE.
        """
        text = read_unit().replace("[Service]\n", "[Service]\nMemoryDenyWriteExecute=no\n")
        self.assertFalse(hardening(text, "c.yaml")["mdwe"])
        self.assertTrue(hardening(text + "\n[Service]\nMemoryDenyWriteExecute=yes\n", "c.yaml")["mdwe"])

    def test_systemd_analyze_security(self) -> None:
        """
        ``systemd-analyze security`` scores the unit's exposure at 1.8
        ("OK") or better.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise self.skipTest("systemd-analyze is not installed")
        result = subprocess.run(
            [analyze, "security", "--offline=true", "--no-pager", UNIT],
            capture_output=True, text=True, timeout=60,
        )
        found = re.search(r"Overall exposure level for kongacme\.service: ([0-9.]+) (\w+)", result.stdout)
        self.assertIsNotNone(found, result.stdout + result.stderr)
        assert found is not None
        self.assertLessEqual(float(found.group(1)), 1.8, result.stdout)


def _status(pid: int) -> dict[str, str]:
    with open("/proc/%d/status" % (pid,)) as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


class HardenedDaemonTests(AcmeDaemonMixin, TestCase):
    """
    Tests for a daemon run under the unit's hardening (what can be applied
    to a process here), against a real Pebble.
    """

    unit_text = ""

    def setUp(self) -> None:
        if not os.path.exists("/proc/self/status"):
            raise self.skipTest("needs Linux /proc")
        self.unit_text = read_unit()

    def _launcher(self) -> str:
        """
        Code for ``python -c``, in place of twistd's: :data:`LAUNCHER` with
        the hardening of :attr:`unit_text`. Daemon.start runs
        ``[python, "-c", TWISTD, "-n", "--pidfile=", "kongacme", "--config",
        PATH]``; only the config PATH (the last argument) is kept, the rest
        comes from the unit's ExecStart.
        """
        spec = hardening(self.unit_text, "CONFIG")
        return (
            "import sys\n"
            "spec = %r\n"
            "spec['argv'] = [sys.argv[-1] if a == 'CONFIG' else a for a in spec['argv']]\n"
            "sys.argv[1:] = [repr(spec)]\n"
            "exec(compile(%r, '<launcher>', 'exec'))\n" % (spec, LAUNCHER)
        )

    def start(self, *args: Any, **kwargs: Any) -> Any:
        # Every Daemon started from here runs the launcher: the unit's
        # hardening, then twistd with the unit's arguments.
        self.patch(daemonproc, "TWISTD", self._launcher())
        return super().start(*args, **kwargs)

    @inlineCallbacks
    def test_handshake_and_order(self):
        """
        Under the unit's hardening the daemon orders a certificate from
        Pebble (TLS client to the CA) for the first visitor and serves it
        (TLS server with ALPN): the handshake verifies against Pebble's
        root. The hardening is in force in the daemon process.
        """
        yield self.start()
        self.assertIn("hardening applied", self.daemon.output)
        status = _status(self.daemon.transport.pid)
        self.assertEqual(status["NoNewPrivs"].strip(), "1")
        self.assertEqual(int(status["CapBnd"], 16), 1 << CAPABILITIES.index("CAP_NET_BIND_SERVICE"))
        self.assertEqual(status["Umask"].strip(), "0077")
        result = yield tlsclients.handshake(
            self.tls_port, "hardened.example.test", tlsclients.client_context(self.root, alpn=["http/1.1"]),
            payload=b"",
        )
        self.assertEqual(result["names"], ["hardened.example.test"])
        self.assertEqual(result["alpn"], "http/1.1")
        self.assertEqual(self.orders("hardened.example.test"), 1)
        self.assertNotIn("Traceback", self.daemon.output)

    @inlineCallbacks
    def test_memory_deny_write_execute_breaks_tls(self):
        """
        The same daemon with MemoryDenyWriteExecute=yes added to the unit
        cannot complete a handshake (pyOpenSSL's callbacks need W+X memory):
        the hardening test would fail if the option came back.
        """
        self.unit_text += "\n[Service]\nMemoryDenyWriteExecute=yes\n"
        yield self.start()
        self.assertIn("'mdwe': True", self.daemon.output)
        try:
            yield tlsclients.handshake(
                self.tls_port, "mdwe.example.test", tlsclients.client_context(), payload=b"", timeout=5
            )
        except Exception:
            pass
        else:
            self.fail("a handshake completed under MemoryDenyWriteExecute")
        yield self.daemon.wait_for("Cannot allocate write+execute memory")
