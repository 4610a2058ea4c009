"""normrepro: reproduce normalization studies (BN, GN, GN+WS, LN/IN, NF-ResNets) on CIFAR-10.

One module per concept (README "Where each concept lives"); `src/train.py` is the command the
train rule calls, a short entry into `normrepro.train`.
"""
