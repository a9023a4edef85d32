"""The trio reference implementation of peering over gRPC."""
