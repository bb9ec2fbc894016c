"""TAIEA release pipeline: phases, probes, runtimes and gates over hash-chained receipts."""

__version__ = "0.1.0"
