"""Experiment schema (protobuf). The *_pb2 modules are generated at install time."""
