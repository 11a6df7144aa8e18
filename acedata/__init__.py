"""acedata: instruction-editing data collection (ACE pipeline) on Ray."""

__version__ = "0.1.0"
