"""twinnode: collaborative learning from differentially private synthetic twin data."""
__version__ = "0.1.0"
