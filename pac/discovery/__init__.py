"""Finding the daemons of a home: mDNS (mdns.py), static peer lists, the devices the home remembers (known.py), and sorting what is found (records.py)."""
