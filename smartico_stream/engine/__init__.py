"""Engine: applies each user's canonical events, in order, to per-user state."""
