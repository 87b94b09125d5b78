"""Hydra instantiates sweepers only from the `hydra_plugins` namespace: this registers
`bnstudy.tune.TunedSweeper` (all of its code lives there) under that namespace."""

from bnstudy.tune import TunedSweeper as _TunedSweeper


class TunedSweeper(_TunedSweeper):
    """`hydra/sweeper=tuned` (`experiment=tuned`): see `bnstudy.tune`."""
