"""Scaling-law fits over a sweep's results table, and the smallest student they predict is good enough."""

from jaxdistill.scaling.laws import (FAMILIES, PARAMS, bootstrap_law, collapse_point, fit_law, fit_table,
                                     load_fits, predict, predict_draws, write_fits)
from jaxdistill.scaling.recommend import recommend

__all__ = ["FAMILIES", "PARAMS", "bootstrap_law", "collapse_point", "fit_law", "fit_table", "load_fits",
           "predict", "predict_draws", "recommend", "write_fits"]
