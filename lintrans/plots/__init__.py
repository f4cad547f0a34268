"""Figure functions, one module per experiment; each takes saved results (plain dicts) and returns figures.

The house style is :mod:`lintrans.plotting`; figures are written by :func:`lintrans.cli.save_figure`.
"""
