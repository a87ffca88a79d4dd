"""Data: the synthetic world generator, the MovieLens loaders and the on-disk world format."""

from hyperrec.data.world import World, load_world, save_world

__all__ = ["World", "load_world", "save_world"]
