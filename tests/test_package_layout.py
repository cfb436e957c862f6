"""The package's shape: public names only in ``__init__``, no module shadowed by a function."""

import importlib
import importlib.util
import pkgutil

import pyflashmm as fm


def test_no_public_name_is_also_a_module():
    for name in fm.__all__:
        assert importlib.util.find_spec(f"pyflashmm.{name}") is None, name


def test_implementation_modules_are_private():
    public = {m.name for m in pkgutil.iter_modules(fm.__path__) if not m.name.startswith("_")}
    assert public == {"cli"}  # the command line's entry point, `pyflashmm = pyflashmm.cli:main`
    for name in fm.__all__:
        assert getattr(fm, name) is not None
    assert importlib.import_module("pyflashmm.cli").main is not None
