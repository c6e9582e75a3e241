"""tagfind: which Windows driver allocates kernel pool with a given tag, from its code."""

__version__ = "0.1.0"
