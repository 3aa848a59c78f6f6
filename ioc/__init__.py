"""ndflow: an EPICS areaDetector-style IOC in pure Python."""

__version__ = "0.1.0"
