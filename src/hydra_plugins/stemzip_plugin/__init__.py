"""Hydra plugin: makes stemzip's configs available to every Hydra app.

Hydra imports this module while discovering plugins. The import registers
stemzip's schema and executor options in the ConfigStore, and the plugin puts
the YAML configs shipped in ``stemzip.conf`` on the config search path, so a
host app can name them in its defaults list without importing stemzip.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

import stemzip.config  # noqa: F401  (registers the ConfigStore nodes)


class StemzipSearchPathPlugin(SearchPathPlugin):
    """Appends ``pkg://stemzip.conf`` to the config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="stemzip", path="pkg://stemzip.conf")
