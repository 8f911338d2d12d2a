"""Imports every policy module so that each registers itself with `parse_policy`."""
from streamst.policies import offline, waitk  # noqa: F401
