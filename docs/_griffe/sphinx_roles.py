"""Griffe extension for the API reference: geoseg's docstrings cite code with Sphinx roles
(``:func:`geoseg.raster.read.open_scene```), which Markdown would show as ``:func:`` plus code.

Each role becomes an optional cross-reference: a link where the target is on the site, plain
code where it is not (so a reference to an undocumented helper never breaks ``--strict``).
Docs-only: nothing in geoseg imports this.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):`(~?)([^`<>]+)`")


def _replace(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if short else target
    if target.startswith("."):
        return f"`{shown.lstrip('.')}`"
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


class SphinxRoles(Extension):
    """Rewrite Sphinx roles in every docstring as it is loaded."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_replace, obj.docstring.value)
