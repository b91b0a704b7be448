"""Feature columns, fitted feature specs and the feature store (embedded and Redis)."""
