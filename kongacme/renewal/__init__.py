"""
Renewal: when each managed certificate is due (threshold, a third of its
lifetime, or the CA's ARI window), the timed service that renews it, and
the per-host state the Admin API, metrics and status page report.
"""
