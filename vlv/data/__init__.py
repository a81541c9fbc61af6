"""Data: the offline shapes world (and, later, readers for image folders, parquet and webdataset shards)."""
