"""The wire format: .proto sources and the Python code generated from them."""
