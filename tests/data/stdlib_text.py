"""Real English text for data tests, offline: docstrings of the running Python's standard library."""

from __future__ import annotations

import importlib
import inspect
import warnings

MODULES = ("argparse", "collections", "json", "textwrap", "pathlib", "functools", "inspect",
           "typing", "subprocess", "logging", "unittest.case", "http.client", "email.message",
           "difflib", "statistics", "fractions", "decimal", "string", "shutil", "tarfile",
           "zipfile", "csv", "datetime", "calendar")


def _module_docstrings(name: str, min_chars: int) -> list[str]:
    module = importlib.import_module(name)
    docs = [inspect.cleandoc(module.__doc__)] if module.__doc__ else []
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        doc = inspect.getdoc(obj)
        if doc and len(doc) >= min_chars and getattr(obj, "__module__", None) == name:
            docs.append(doc)
    return docs


def stdlib_docstrings(min_chars: int = 80) -> list[str]:
    """Module, class and function docstrings (about 260 texts, 150 kB), in a fixed order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # typing.io / typing.re on access
        return [doc for name in MODULES for doc in _module_docstrings(name, min_chars)]
