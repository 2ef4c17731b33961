"""Griffe extension for the API reference: the reST roles of the docstrings as Markdown.

The docstrings name other objects Sphinx-style (``:func:`name```, ``:class:`~pkg.Name```,
``:mod:`.sibling```); the API reference renders docstrings as Markdown, where such a role
would show verbatim. Each role becomes inline code of the name as written (without ``~``).
"""
from __future__ import annotations

import re

from griffe import Extension

ROLE = re.compile(r":(?:class|func|data|meth|mod|attr|obj|exc):`~?([^`]+)`")


class RestRoles(Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
