"""One home per paper: `papers/<paper>/` holds what is specific to one paper, in the same six modules for
every paper (docs/CONTRIBUTING.md, "Adding a paper"): data.py, experiment.py, tables.py, figures.py,
claims.py and a docstring-only __init__.py. Nothing here imports anything, so importing one paper's
experiment module does not pull another paper's code into its cache key."""
