"""Examples that build on the steps package (not installed with it): put the repository root on the Python path."""
