"""Hooks into other training frameworks; each is optional and imported on demand.

- :mod:`cdism_fast.integrations.basicsr`: ``register()`` adds the losses to BasicSR's loss registry.
"""
