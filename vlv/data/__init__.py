"""Training data: readers over folders, parquet files and webdataset shards (`readers`), and the sharded,
shuffled, resumable batch stream (`stream`). Images go through the one transform of `vlv.images`."""

from vlv.data.readers import Record, Source, Unit, open_source
from vlv.data.stream import DataStream
from vlv.images import UnreadableImage, decode_image, preprocess

__all__ = ["DataStream", "Record", "Source", "Unit", "UnreadableImage", "decode_image", "open_source", "preprocess"]
