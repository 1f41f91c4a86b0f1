"""Small helpers every layer may use (no estimator, no engine)."""
