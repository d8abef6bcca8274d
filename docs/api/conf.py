"""Sphinx configuration of entrolab's API reference, generated from the docstrings (``make docs``; the test suite
builds it with warnings as errors, so a broken docstring or a missing page fails)."""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src")))

project = "entrolab"
author = "the entrolab developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
napoleon_numpy_docstring = True
napoleon_google_docstring = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = ["trl", "verl", "transformers", "bitsandbytes", "ray", "gymnasium", "stable_baselines3"]
suppress_warnings = ["autodoc.import_object"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
