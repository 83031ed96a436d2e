"""Differentiable physics of the QA station (torch). Imports nothing from other layers."""

from metrology.physics.geometry import StationGeometry
from metrology.physics.model import CALIBRATABLE, STATION_PARAMETERS, StationModel

__all__ = ["StationGeometry", "StationModel", "CALIBRATABLE", "STATION_PARAMETERS"]
