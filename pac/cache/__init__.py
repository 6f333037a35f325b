"""The activation cache (paper §4.2): the frozen backbone's hidden states per sample, kept from epoch 1
so later epochs train the side network without running, or even loading, the backbone."""

from pac.cache.codec import PRECISIONS, decode, encode
from pac.cache.store import ActivationCache, CacheCorruption, CacheKey, sample_key

__all__ = ["PRECISIONS", "ActivationCache", "CacheCorruption", "CacheKey", "decode", "encode", "sample_key"]
