"""Thin container entrypoints: each wires ``callscribe`` core code to a container's process."""
