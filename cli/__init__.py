"""peerkit: a formal model, a model checker and a reference implementation of Consul cluster
peering's deletion lifecycle and peer-stream shutdown, with tests that hold one to the other.

The repository's folders are the architecture; each is installed under this namespace (this
file itself lives in ``cli/``, so that no folder named ``peerkit`` in a checkout can shadow the
installed package):

=====================  ==================  ===================================================
folder                 import name         job
=====================  ==================  ===================================================
``model/``             ``peerkit.model``   the pure, sans-I/O state machine: the oracle
``checker/``           ``peerkit.checker`` a generic explicit-state model checker
``impl/``              ``peerkit.impl``    the trio reference implementation over gRPC
``proto/``             ``peerkit.proto``   the wire format (.proto sources and generated code)
``conformance/``       ``peerkit.conformance`` reusable checks any implementation can be run against
``cli/``               ``peerkit``         the command line (``peerkit check``, ``bugs``, ...)
=====================  ==================  ===================================================

Layering (enforced by tests/test_layering.py): ``model`` imports only the standard library;
``checker`` imports only the standard library (and ``rich`` lazily, for progress); ``impl`` may
import ``model.vocabulary`` and ``proto``; nothing imports ``impl`` except the CLI and tests.
"""

__version__ = "0.1.0"
