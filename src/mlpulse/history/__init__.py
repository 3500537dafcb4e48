"""The history: joined rows as Parquet in Hive layout, per-minute rollups beside them.

`layout` names the files and decides which of them hold the rows, `writer` puts rows in
(exactly once, compacted, under retention), `query` reads ranges back out.
"""
