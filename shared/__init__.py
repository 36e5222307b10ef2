"""Wire models and protocol constants shared by every Flywheel component."""

__version__ = "0.1.0"
