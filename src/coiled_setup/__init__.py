"""coiled-setup: set up a Google Cloud project for Coiled."""

__version__ = "0.1.0"
