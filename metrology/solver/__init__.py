"""Joint reconstruction (UA-FP): schedules, losses, initialisation, the fit and its uncertainty.

Imports the physics (and the base layer); never the analysis, report, audit or CLI layers.
"""

from metrology.solver.quality import NoiseModel
from metrology.solver.reconstruct import FitResult, reconstruct
from metrology.solver.schedule import ParameterSpec, Schedule, default_schedule

__all__ = ["NoiseModel", "FitResult", "reconstruct", "ParameterSpec", "Schedule", "default_schedule"]
