"""jaxdistill: distil a teacher LLM into a structurally pruned student for one domain, and measure
what it costs in general knowledge."""

__version__ = "0.1.0"
