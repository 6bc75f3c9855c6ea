"""The node manager's admin HTTP API, its Failover Monitor page and its Prometheus metrics
(hypercorn serving a Starlette application on the node manager's Trio loop)."""
