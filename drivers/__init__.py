"""Detector drivers: sim, ..."""
