"""defectseg: find and localize surface defects in industrial images."""

__version__ = "0.1.0"
