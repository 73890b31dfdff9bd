"""The replica-database source: the operator's SQL views polled in cycles into the same pipeline
(docs/replica.md). Kept free of imports: config.py imports the settings module from here."""
