"""Operations tooling: lag read from the broker (``smartico-stream lag``), alert and dashboard
generators for deploy/, and the shutdown budget Kubernetes manifests are checked against.

Nothing here runs inside the consumer's hot path; the service does not import this package."""
