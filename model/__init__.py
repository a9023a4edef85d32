"""The executable model of Consul cluster peering: lifecycle, stream shutdown, deferred deletion.

A sans-I/O state machine in the style of h11 and h2. Worlds (state.py) are immutable values;
actions (actions.py) are small immutable values; `PeeringModel.enabled(world)` lists what can
happen and `PeeringModel.step(world, action)` says what it leads to. The protocol's decisions
live in two tables (tables.py); machine.py reads them; properties.py says what must always (and
eventually) hold; render.py puts runs into words and diagrams.

Quick use::

    from peerkit.model import PeeringModel, get_config, actions as A
    model = PeeringModel(get_config("default"), bugs={"termination-race"})
    world = model.initial()
    world = model.step(world, A.Delete(1, 0))

Import rules: this package imports only the standard library. It never imports trio, grpc,
anything that does I/O, reads clocks or draws random numbers, and nothing from peerkit.impl or
peerkit.checker (tests/test_layering.py checks this).
"""

from . import actions
from .config import CONFIGS, Config, get_config
from .machine import IllegalAction, PeeringModel, ProtocolError
from .state import World
from .vocabulary import BUGS, PROPERTY_IDS, PeeringState

__all__ = [
    "BUGS",
    "CONFIGS",
    "PROPERTY_IDS",
    "Config",
    "IllegalAction",
    "PeeringModel",
    "PeeringState",
    "ProtocolError",
    "World",
    "actions",
    "get_config",
]
