"""
Getting certificates: which hosts are admitted, the on-demand handshake
gate, single-flight orders with backoff and rate limits, and the ACME
issuer that fills the certificate cache and storage.
"""
