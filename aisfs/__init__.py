"""aisfs: mount an NVIDIA AIStore cluster, bucket or prefix as a local directory (FUSE)."""

__version__ = "0.1.0"
