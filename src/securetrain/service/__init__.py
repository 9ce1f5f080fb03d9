"""The team service: an HTTP API (FastAPI) with accounts, roles, datasets, jobs run by a worker
process, and a web dashboard."""
