"""Advantage estimators: a registry with one signature (:mod:`~divalign.advantages.registry`) and one estimator
(or a pair of close ones) per module. Every module of this package is imported here, so an estimator registers
itself by being written into the package. The equations are in docs/algorithms.md#advantage-estimators."""

import importlib
import pkgutil

from divalign.advantages.distinct import DistinctOptions, distinct_pairs
from divalign.advantages.gae import GAEOptions, gae, whiten
from divalign.advantages.group import group_normalized
from divalign.advantages.registry import Advantages, Estimator, EstimatorInputs, get, names, register
from divalign.advantages.rloo import leave_one_out

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Advantages", "DistinctOptions", "Estimator", "EstimatorInputs", "GAEOptions", "distinct_pairs", "gae",
           "get", "group_normalized", "leave_one_out", "names", "register", "whiten"]
