#!/usr/bin/env python3
"""
sslyze against kongacme's TLS listener: does it comply with Mozilla's
"intermediate" configuration?

Starts a kongacme daemon serving a kongacme.testing.TestCA-issued leaf for
bench.test (ECDSA P-256 by default) and runs

    python -m sslyze --mozilla_config=intermediate --certinfo_ca_file=CA.pem \\
        --sni bench.test 127.0.0.1:PORT

from sslyze's own virtualenv (it pins an older cryptography than kongacme;
created at --venv with pip if missing). With --also-haproxy the same scan
runs against HAProxy with the same certificate, for reference.
Exit status 0 when kongacme is compliant. Output: bench/out/sslyze-*.txt and
bench/out/sslyze.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import benchlib as B


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", default="/tmp/sslyze-venv", help="sslyze virtualenv (default /tmp/sslyze-venv)")
    p.add_argument("--no-install", action="store_true", help="fail instead of creating the venv")
    p.add_argument("--key-type", choices=("ecc", "rsa"), default="ecc")
    p.add_argument("--also-haproxy", action="store_true", help="also scan HAProxy with the same certificate")
    p.add_argument("--generated-fallback", action="store_true",
                   help="let kongacme generate its self-signed fallback (served without SNI) instead of "
                        "using the leaf as fallback too")
    p.add_argument("--json", default="sslyze.json", help="result file under bench/out/")
    return p.parse_args(argv)


def sslyze_python(venv: str, install: bool) -> str:
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python):
        ok = subprocess.run([python, "-c", "import sslyze"], capture_output=True).returncode == 0
        if ok:
            return python
    if not install:
        raise SystemExit("sslyze not found in %s: python3 -m venv %s && %s/bin/pip install sslyze" % (venv, venv, venv))
    B.log("creating %s with sslyze" % venv)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "sslyze"], check=True)
    return python


def scan(python: str, ca: str, host: str, port: int, label: str) -> dict:
    argv = [python, "-m", "sslyze", "--mozilla_config=intermediate", "--certinfo_ca_file=%s" % ca,
            "--sni", host, "127.0.0.1:%d" % port]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    text = res.stdout + res.stderr
    out_path = os.path.join(B.out_dir(), "sslyze-%s.txt" % label)
    with open(out_path, "w") as f:
        f.write("$ " + " ".join(argv) + "\n" + text)
    compliance = ""
    if "COMPLIANCE AGAINST" in text:
        compliance = "\n".join(line for line in text[text.find("COMPLIANCE AGAINST"):].splitlines()
                                if line.strip() and "Warning" not in line and "self._x509_store" not in line)
    return {"argv": " ".join(argv), "exit": res.returncode, "compliant": res.returncode == 0,
            "compliance_section": compliance.strip(), "summary": summarize(text), "output_file": out_path}


def summarize(text: str) -> dict:
    """The lines worth quoting: protocols, suites, curves, certificate checks."""
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if re.search(r"(Attempted to connect|Accepted cipher suites|rejected|Forward Secrecy|Supported curves|"
                     r"Rejected curves|Hostname Validation|Trust Store|Key Size|Signature Algorithm|Not After|"
                     r"Received Chain|Verified Chain|OCSP Must-Staple|Deflate|Downgrade Prevention|"
                     r"Client-initiated Renegotiation|Secure Renegotiation|Heartbleed|ROBOT|OpenSSL CCS|"
                     r"Extended Master Secret|Early Data|TLS 1\.3 Early|Mozilla|compliant|SCANS COMPLETED|"
                     r"TLS_|_WITH_|ERROR)", s):
            keep.append(s)
    return {"lines": keep[:120]}


def main(argv=None) -> int:
    args = parse_args(argv)
    python = sslyze_python(args.venv, not args.no_install)
    work = B.out_dir("sslyze")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    ca_pem = os.path.join(B.out_dir("ca"), "ca.pem")
    host = "bench.test"
    leaf = B.issue_files(ca, work, "leaf-" + args.key_type, [host], key_type=args.key_type)
    results: dict = {"args": vars(args), "machine": B.machine_info(), "sslyze_version":
                     subprocess.run([python, "-m", "pip", "show", "sslyze"], capture_output=True, text=True)
                     .stdout.split("Version:")[-1].split()[0]}
    with B.Processes() as procs:
        up_port, k_port = B.free_port(), B.free_port()
        B.start_haproxy(procs, "ss-upstream", B.haproxy_upstream_config(up_port), up_port, B.CLIENT_CPU)
        cfg = B.kongacme_config(work, k_port, [{"cert": leaf["cert"], "key": leaf["key"]}],
                                [{"hosts": [host], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["h2", "http/1.1"]}],
                                fallback=leaf)
        if args.generated_fallback:
            import yaml

            with open(cfg) as f:
                conf = yaml.safe_load(f)
            conf["tls"]["fallback_cert"] = conf["tls"]["fallback_key"] = None
            with open(cfg, "w") as f:
                yaml.safe_dump(conf, f, sort_keys=False)
        B.start_kongacme(procs, "ss-kongacme", cfg, k_port, cpu=None)
        results["kongacme"] = scan(python, ca_pem, host, k_port,
                                   "kongacme-generated-fallback" if args.generated_fallback else "kongacme")
        if args.also_haproxy:
            h_port = B.free_port()
            B.start_haproxy(procs, "ss-haproxy", B.haproxy_tls_config(h_port, leaf["pem"], up_port), h_port, None)
            results["haproxy"] = scan(python, ca_pem, host, h_port, "haproxy")
    path = B.save_json(args.json, results)
    for label in ("kongacme", "haproxy"):
        if label not in results:
            continue
        r = results[label]
        print("== %s: %s (sslyze exit %d)" % (label, "COMPLIANT with Mozilla intermediate" if r["compliant"]
                                             else "NOT compliant", r["exit"]))
        print(r["compliance_section"] or "(no compliance section; see %s)" % r["output_file"])
        print("full output:", r["output_file"])
    print("raw results:", path)
    return 0 if results["kongacme"]["compliant"] else 1


if __name__ == "__main__":
    sys.exit(main())
