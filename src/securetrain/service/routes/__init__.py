"""The HTTP API as routers, one per resource, in the order the OpenAPI spec lists them. Every
route names the roles it admits (``deps``); no response carries a key or a row of data."""

from securetrain.service.routes import auditlog, auth, datasets, jobs, results, users

ROUTERS = (
    auth.router,
    users.router,
    datasets.router,
    jobs.router,
    results.router,
    auditlog.router,
)
