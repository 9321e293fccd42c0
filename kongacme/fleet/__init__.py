"""
Sharing certificates across a fleet of nodes through the shared storage.
"""
