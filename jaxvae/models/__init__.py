"""Models: the model interface and one module per family (MLP, conv, VQ, ladder, flow, conditional, M2, sequence)."""
