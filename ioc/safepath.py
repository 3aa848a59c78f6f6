"""Paths a PV may name, checked against the configured roots and opened without following links.

The implementation lives in the algorithm package (`ndflow.algorithm.safepath`), standard library
only, because an algorithm's child reads files through it too (`read_file`); the IOC's modules
import it under this name.
"""

from .algorithm.safepath import *  # noqa: F401,F403
