"""Sphinx configuration for accel's documentation (no network-bound extensions)."""

project = "accel"
author = "The accel developers"
copyright = "the accel developers"
extensions: list[str] = []
master_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
