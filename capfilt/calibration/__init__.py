"""The ITM threshold for a precision target, from bootstrap scores and labels (`capfilt calibrate`)."""

from capfilt.calibration.curve import (CalibrationError, CalibrationResult, Curve, PrecisionUnreachable, calibrate,
                                       precision_recall_curve, threshold_for_precision)

__all__ = ["CalibrationError", "CalibrationResult", "Curve", "PrecisionUnreachable", "calibrate",
           "precision_recall_curve", "threshold_for_precision"]
