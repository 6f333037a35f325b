"""Protobuf <-> the product's own types: one module per proto (common, daemon, tensor, collective, stage).

Nothing outside pac.net and the servicers reads or builds pac.v1 messages' fields.
"""
