"""
TLS termination: reading the ClientHello, choosing a certificate per SNI
from the in-process cache, and the OpenSSL contexts that serve it.
"""
