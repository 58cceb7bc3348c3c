"""visualsearch: the shared library behind the companion notebooks.

Notebooks orchestrate and explain; everything worth testing lives here. See docs/CONTRIBUTING.md for the
module map and the contracts between modules.
"""

__version__ = "0.1.0"
