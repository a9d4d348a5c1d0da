"""One test case per registered credit-assignment rule, collected by ``tests/rules/test_every_rule.py``.

Add a module here for a new rule that calls :func:`tests.rules.harness.register_case`; it is imported below.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
