"""The executable model of Consul cluster peering. See model/README or specs/."""
