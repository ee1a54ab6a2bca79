"""nextpoi: a research workbench for next-POI category prediction.

The library owns everything that computes; notebooks and the command line only call it.
"""

__version__ = "0.1.0"
