"""Probes: read the machine through a System and return plain facts. They never judge."""
