"""Meshes, logical-axis sharding rules, and host batches -> global arrays."""
