"""vmha failover package."""
