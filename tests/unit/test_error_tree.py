"""One error tree: every exception class securetrain defines derives from SecureTrainError, so
that the CLI and the service map each one deliberately, never as an unexpected crash."""

import importlib
import inspect
import pkgutil

import securetrain
from securetrain.errors import AccessDenied, SecureTrainError, UserError


def _modules() -> list[str]:
    """Every library module: not the CLI's ``__main__`` nor the Alembic scripts, which run
    when imported."""
    return [
        info.name
        for info in pkgutil.walk_packages(securetrain.__path__, "securetrain.")
        if not info.name.endswith("__main__") and ".migrations" not in info.name
    ]


def _exception_classes() -> dict[str, type[BaseException]]:
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found[f"{name}.{cls.__qualname__}"] = cls
    return found


def test_every_exception_class_under_securetrain_is_in_the_one_tree() -> None:
    classes = _exception_classes()
    assert "securetrain.service.registry.NotVisible" in classes
    assert "securetrain.service.worker.Cancelled" in classes
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, SecureTrainError))
    assert outside == []


def test_refused_service_requests_are_user_errors_not_security_failures() -> None:
    classes = _exception_classes()
    refused = [
        "securetrain.service.auth.AuthError",
        "securetrain.service.auth.Throttled",
        "securetrain.service.jobs.LimitReached",
        "securetrain.service.registry.Forbidden",
        "securetrain.service.registry.NotVisible",
    ]
    assert all(issubclass(classes[name], AccessDenied) for name in refused)
    assert issubclass(AccessDenied, UserError)
