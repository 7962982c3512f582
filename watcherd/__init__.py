"""watcherd: a watch-only blockchain watcher daemon for billing systems."""

__version__ = "0.1.0"
