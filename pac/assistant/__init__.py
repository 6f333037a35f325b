"""Using the tuned model at home: decoding with key/value caches (decode.py) and what a daemon serves."""
