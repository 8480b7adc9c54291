"""Fault injection for live runs: loopback proxies that break the world's links on a timeline.

Two proxies, each its own process with a control API (`POST/GET /_faults`):

- `rpc_proxy`: between the facilitator and the node; latency, errors (429/500/503/timeout),
  a stall that also stops the node's mining, and sent transactions dropped from the pool;
- `http_proxy`: between the priced services and the facilitator; /settle answers lost after
  the settlement happened (`5xx_after_settle`).

Why proxies rather than hooks in our own parts: a fault then looks the same to any facilitator
or service, ours or an outside one, and the part under test runs unmodified. The JSON keys of
the control API are in `api`; `control` has the Python client and a child-process wrapper.
"""
