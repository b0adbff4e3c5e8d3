"""A training worker process.  Deliberately empty: see worker/__main__.py and worker/client.py."""
