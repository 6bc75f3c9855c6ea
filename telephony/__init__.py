"""vmha telephony package."""
