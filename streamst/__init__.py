"""streamst: streaming speech translation and recognition runtime."""
__version__ = "0.1.0"
