"""Finding the daemons of a home: mDNS (mdns.py), static peer lists, and sorting what is found (records.py)."""
