"""Imports every policy module so that each registers itself with `parse_policy`."""
from streamst.policies import alignatt, edatt, local_agreement, offline, streamatt, waitk  # noqa: F401
