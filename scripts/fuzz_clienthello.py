#!/usr/bin/env python3
"""
Fuzz the compiled ClientHello reader (kongacme/tls/_clienthello.c) against
the Python one, its reference, under AddressSanitizer and UBSan.

Builds the extension with ``-fsanitize=address,undefined`` into a scratch
directory, re-runs itself with libasan preloaded, then for ``--seconds``
feeds both readers real hellos (OpenSSL's, from tests/clienthellos.py)
re-cut into records, with bytes changed, cut short and followed by junk,
and stops at the first input they read differently (printed in hex) or at
the sanitizers' first report. Exit status 0: no difference, no report.

    .venv/bin/python scripts/fuzz_clienthello.py --seconds 300 --seed 7
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "kongacme", "tls", "_clienthello.c")


def build(directory: str) -> str:
    """The sanitized extension, built into ``directory``; its path."""
    target = os.path.join(directory, "_clienthello_asan.so")
    subprocess.run(
        ["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         "-fno-omit-frame-pointer", "-shared", "-fPIC", "-I" + sysconfig.get_paths()["include"], SOURCE,
         "-o", target],
        check=True,
    )
    return target


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    if rng.random() < 0.5:  # the same handshake message in other records
        body = data[5:]
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 4)))
        points = [0, *cuts, len(body)]
        data = bytearray(b"".join(
            b"\x16\x03\x01" + (b - a).to_bytes(2, "big") + body[a:b] for a, b in zip(points, points[1:])))
    for _ in range(rng.randint(0, 6)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    if rng.random() < 0.3:
        data = data[: rng.randrange(len(data) + 1)]
    if rng.random() < 0.1:
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
    return bytes(data)


def fuzz(module_path: str, seconds: float, seed: int) -> int:
    sys.path.insert(0, REPO)
    from kongacme.errors import ClientHelloError
    from kongacme.tls import clienthello
    from tests.clienthellos import client_hello_bytes, with_raw_sni

    spec = importlib.util.spec_from_file_location("kongacme.tls._clienthello", module_path)
    assert spec is not None and spec.loader is not None
    compiled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)

    def outcome(read, *args):
        try:
            return ("read", read(*args))
        except ClientHelloError as e:
            return ("refused", str(e))

    seeds = [client_hello_bytes("a.test", ["h2", "http/1.1"]), client_hello_bytes(),
             with_raw_sni(b"x\x00y"), client_hello_bytes("b.test", ["x"] * 20)]
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        data = mutate(rng, seeds)
        python = outcome(clienthello._parse_parts, data)
        ours = outcome(compiled.parse, data)
        sized = outcome(compiled.parse, bytearray(data) + b"\x16\x03", len(data))
        if not python == ours == sized:
            print("different readings of %s: python %r, compiled %r, sized %r" % (data.hex(), python, ours, sized))
            return 1
        count += 1
    print("%d inputs, no difference, no sanitizer report (seed %d)" % (count, seed))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--module", help=argparse.SUPPRESS)  # the re-run's sanitized build
    args = p.parse_args(argv)
    if args.module:
        return fuzz(args.module, args.seconds, args.seed)
    with tempfile.TemporaryDirectory() as directory:
        module = build(directory)
        asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                              check=True).stdout.strip()
        env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0")
        return subprocess.run([sys.executable, __file__, "--seconds", str(args.seconds), "--seed", str(args.seed),
                               "--module", module], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
