"""Custom code of the digits_custom app: a model and a trainer hook.

The training child puts the app's resources/ folder first on sys.path and
imports this package fresh in every run, so an edited module is picked up by
the next run without renaming anything.
"""
