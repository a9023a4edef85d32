"""Conformance checks that any peering implementation can be run against."""
