"""Data: the event, user and item schemas, the world on disk (generated or loaded), the data
gate, which events count as positive and the temporal split, and the two logs the platform
appends to (events in, impressions out); on a cluster the events go to Kafka (`kafka_log`) and
the offline sink writes them back as parquet for training (`offline_sink`)."""

from hyperrec.data.world import World, load_world, save_world

__all__ = ["World", "load_world", "save_world"]
