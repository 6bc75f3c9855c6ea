"""vmha integrations package."""
