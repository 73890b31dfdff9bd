"""Sources: consuming from brokers, partition ownership, commits. Nothing else."""
