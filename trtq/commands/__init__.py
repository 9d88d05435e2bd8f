"""Click commands; each module holds one command and stays a thin layer over the Python API."""
