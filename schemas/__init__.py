"""The contract: Avro schemas and codec, ids, partitioning, topic names."""
