# No __init__.py in twisted/ or twisted/plugins/: Twisted's plugin system
# merges this directory into the installed twisted.plugins package.
from twisted.application.service import ServiceMaker

kongacme = ServiceMaker(
    "kongacme",
    "kongacme.tap",
    "Automatic-HTTPS TLS proxy (Kong's ACME plugin as a daemon)",
    "kongacme",
)
