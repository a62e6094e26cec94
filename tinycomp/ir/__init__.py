"""The IR: the op table, the networkx-backed Graph, passes, printer and interpreter."""

from .graph import Graph

__all__ = ["Graph"]
