"""Raw cohorts: the nnU-Net v2 raw layout with sabnet's sequence/location extensions."""
