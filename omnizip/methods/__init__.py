"""Built-in compression methods; importing this package registers them.

``identity``, ``random``, ``uniform``, ``dycoke`` and ``omnizip`` (offline or streaming). Adding a
method is one module with a ``@register("name")`` factory plus one import line here.
"""

from omnizip.methods import dycoke, identity, omnizip, random, uniform

__all__ = ["dycoke", "identity", "omnizip", "random", "uniform"]
