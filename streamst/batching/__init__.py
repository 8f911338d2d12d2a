"""Many streams in one step.

- `steps`: the torch encoder step over stacked caches and batched greedy decoding (what the server runs);
- `sessions`: one chunk for many `Session`s through those steps, policies per stream, failures isolated;
- `realtime`: how many real-time streams `step_sessions` carries (`streamst bench`), on a virtual clock;
- `device`: every stream's state in one set of device tensors, features to AlignAtt batched (`bench --device`).
"""
