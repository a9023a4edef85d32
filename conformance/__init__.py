"""Conformance checks: the transport contract (``transport``), and the model-conformance kit
that holds the trio implementation to the model step by step under Hypothesis (``stateful``,
built on ``guest``, ``abstraction``, ``candidates``, ``coverage``, ``profiles``).

May import: the standard library, trio, hypothesis (``stateful`` and ``profiles`` only),
``peerkit.model`` and ``peerkit.impl``; never ``peerkit.checker`` (tests/test_layering.py).
"""
