"""A generic explicit-state model checker."""
