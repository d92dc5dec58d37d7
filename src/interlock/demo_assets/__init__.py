"""Configs and models the installed package ships for ``interlock demo`` (package data).

``cartpole/`` is the CartPole example's config and models; ``examples/cartpole/`` in the source
checkout links to these files (one copy) and keeps the scripts that train them.
"""
