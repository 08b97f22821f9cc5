"""The data stage: storage URIs (local and ``s3://``), the built-in datasets, snapshots, validation and features."""
