"""The network: adapter-SAM with hybrid prompting and a depth-attention branch (see sab_model.py).

Import from the modules (sabnet.model.config, .sab_model, ...): importing this package stays cheap,
so planning and preprocessing do not load segment_anything.
"""
